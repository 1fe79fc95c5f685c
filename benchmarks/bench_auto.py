"""Is the no-flags default right? `transferlab train DATA` (auto: out-of-fold evidence, an ensemble)
against the strong 30-line probe, the best single candidate of its own search and fixed
strategies, on data sets it never saw, scored on held-out images none of them trained or chose on.

- Calibration group (digits, textures, gratings): the only sets any default of auto (budget,
  sizes, candidates, the noise rule) may be set or checked on.
- Evaluation group: Fashion-MNIST at 30, 100 and 500 images per class (drawn from the training
  IDX file with this script's own seed) scored on 2,000 images of the official test split (200 per
  class, seeded), and microscopy crops (a far domain, not Fashion-MNIST) scored on a seeded 30%
  held out of the folder, and letters at 100 images per class (A-J in matplotlib's fonts, upper and lower
  case in one class: a notMNIST-like set, _datasets.letters) scored on 2,000 letters drawn with a seed of
  their own. Never used to set anything; the targets are judged here.

Contenders, each given every image of DATA (no test split of its own):
- auto: `transferlab train DATA` with no flags (its own default budget), wall time = search + final fit;
- best single: the search's best single candidate (its record), refit alone the way auto refits it;
- strong probe: the 30-line script a careful user writes: raw pooled features of the same bundled
  backbone at its own size (224 px) + LogisticRegressionCV (C by 5-fold log loss), no transferlab;
- fixed strategies (`--fixed`, default linear-probe and fine-tune), each with `--budget` equal to
  auto's own wall time on that set: the same time to spend.

Draws: each Fashion-MNIST and letters regime is drawn `--draws` times from the training file (seeds 11, 12, ...),
and its verdict is over the draws (one draw, or one quiet machine, can mislead).

Targets (the evaluation group): auto at least one point above the strong probe on the mean of each
Fashion-MNIST regime's draws, and never below it on a draw, and the same on a set that is not
Fashion-MNIST (letters); never below the best fixed strategy
by more than one standard error; auto's wall time within its budget (10 min) plus a tenth.

Under load (`--load S`): every auto run is repeated with CPU-bound processes (one per core) for
its first S seconds, while the search times its costs, and the plan (the sizes searched, the
training candidates run) is compared with the quiet run's.

    python benchmarks/bench_auto.py [--group evaluation|calibration|all] [--sets fmnist30,...]
        [--draws 3] [--first-draw 0] [--fixed ''] [--no-single] [--load 60]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
import _datasets  # noqa: E402
from _report import report  # noqa: E402

from transferlab.cli import quiet_lightning  # noqa: E402
from transferlab.config import load_config  # noqa: E402
from transferlab.evaluate import evaluate_run  # noqa: E402
from transferlab.run import run_training  # noqa: E402

FMNIST = Path("/usr/share/datasets/fashion-mnist")
FIXED = {"linear-probe": ["strategy.name=linear-probe"], "fine-tune": ["strategy.name=fine-tune"],
         "feature-extraction": ["strategy.name=feature-extraction"], "gradual": ["strategy.name=gradual"]}
GROUPS = {"calibration": ("digits", "textures", "gratings"),
          "evaluation": ("fmnist30", "fmnist100", "fmnist500", "letters100", "microscopy")}
DRAWN = ("fmnist", "letters")  # regimes drawn --draws times; the others are one fixed folder
OLD_SEARCH_SECONDS = 8.5 * 60  # the search this replaces, on 1,000 Fashion-MNIST images on 2 cores


def idx(name: str) -> np.ndarray:
    """An official Fashion-MNIST IDX file, read by the tool's own reader (data/builtins.py)."""
    from transferlab.data.builtins import read_idx

    return read_idx(FMNIST / name)


def write_fmnist(root: Path, part: str, per_class: int, seed: int) -> str:
    """A class-folder tree of `per_class` seeded Fashion-MNIST images per class from the official `part`."""
    images, labels = idx(f"{part}-images-idx3-ubyte.gz"), idx(f"{part}-labels-idx1-ubyte.gz")
    rng = np.random.default_rng(seed)
    for label in range(10):
        for k in rng.choice(np.flatnonzero(labels == label), per_class, replace=False):
            path = root / f"class{label}" / f"{k:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[k]).save(path)
    return str(root)


def split_folder(source: Path, data: Path, test: Path, test_share: float, seed: int) -> None:
    """Copy each class's images, a seeded `test_share` of them to `test`, the rest to `data`."""
    rng = np.random.default_rng(seed)
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        files = sorted(folder.iterdir())
        held = set(rng.choice(len(files), round(len(files) * test_share), replace=False).tolist())
        for k, file in enumerate(files):
            target = (test if k in held else data) / folder.name / file.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(file, target)


def build(name: str, base: Path) -> tuple[str, str]:
    """(DATA, held-out test DATA) for a benchmark set."""
    if name.startswith("fmnist"):
        test = base / "fmnist-test"
        if not test.exists():
            write_fmnist(test, "t10k", 200, seed=7)
        per_class, _, draw = name[len("fmnist"):].partition("-")
        return write_fmnist(base / name, "train", int(per_class), seed=11 + int(draw or 0)), str(test)
    if name.startswith("letters"):
        test = base / "letters-test"
        if not test.exists():
            _datasets.letters(test, per_class=200, seed=7)
        per_class, _, draw = name[len("letters"):].partition("-")
        return str(_datasets.letters(base / name, per_class=int(per_class), seed=11 + int(draw or 0))), str(test)
    if name == "digits":
        from sklearn.datasets import load_digits

        digits = load_digits()
        source = base / "digits-all"
        for i, (image, label) in enumerate(zip(digits.images, digits.target)):
            (source / str(label)).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.rint(image * 255 / 16).astype(np.uint8)).save(source / str(label) / f"{i:04d}.png")
    else:
        source = Path(_datasets.build(name, base, **({} if name == "faces" else {"per_class": 100})))
    data, test = base / f"{name}-data", base / f"{name}-test"
    split_folder(source, data, test, 0.3 if name != "digits" else 0.75, seed=1)
    return str(data), str(test)


def strong_probe(data: str, test: str) -> tuple[float, float]:
    """The strong 30-line script: raw pooled features at the backbone's own size (224 px) +
    LogisticRegressionCV choosing C by 5-fold log loss. Only transferlab's loaders of files and of
    the bundled weights are used, so every contender has the same images and backbone."""
    from sklearn.linear_model import LogisticRegressionCV

    started = time.perf_counter()

    def features(spec: str):
        x, dataset = _datasets.raw_features(spec)
        return x, [dataset.classes[i] for i in dataset.labels]

    x, y = features(data)
    x_test, y_test = features(test)
    classifier = LogisticRegressionCV(Cs=10, cv=5, scoring="neg_log_loss", max_iter=3000).fit(x, y)
    accuracy = float(np.mean(classifier.predict(x_test) == np.array(y_test)))
    return accuracy, time.perf_counter() - started


def contender(data: str, test: str, overrides: list[str], out: Path) -> tuple[float, float, dict]:
    """Held-out accuracy, wall seconds and strategy record of one `transferlab train` run."""
    # the test images are outside DATA, so no contender holds a test split of its own back (as the
    # script does not): every image of DATA is there to train and to choose on
    # a cold cache of its own: every contender pays for its own decoding, features and exports
    config = load_config(overrides=["train.report=false", "data.test_fraction=0", f"data.cache_dir={out}-cache",
                                    *overrides])
    started = time.perf_counter()
    run = run_training(data, config, out=out, progress=False)
    seconds = time.perf_counter() - started
    evaluation = evaluate_run(run, test, progress=False)
    accuracy = json.loads((evaluation / "metrics.json").read_text())["test"]["accuracy"]
    record = json.loads((run / "metrics.json").read_text())
    # the run's budget (metrics.json seconds.budget: the whole run's), not the search's share of it
    return accuracy, seconds, {**record["strategy"], "run_budget": (record.get("seconds") or {}).get("budget"),
                               "run_seconds": record.get("seconds") or {}}


def best_single(decision: dict) -> list[str]:
    """Config overrides that refit the search's best single candidate alone, as auto refits members."""
    best = decision["best_single"]
    settings = dict(best["settings"])
    if best["strategy"] == "linear-probe":
        settings["strategy.linear_probe.refit_on_val"] = True
    return [f"strategy.name={best['strategy']}", f"preprocess.size={best['size']}",
            *(f"{k}={json.dumps(v)}" for k, v in settings.items())]


def spin(until: float) -> None:
    x = 0
    while time.monotonic() < until:
        x += 1


def burn(seconds: float) -> list:
    """One CPU-bound process per core for `seconds`: another program on a user's laptop."""
    import multiprocessing
    import os

    until = time.monotonic() + seconds
    workers = [multiprocessing.Process(target=spin, args=(until,), daemon=True) for _ in range(os.cpu_count() or 1)]
    for worker in workers:
        worker.start()
    return workers


def plan_of(decision: dict) -> dict:
    """What the plan bought: the sizes whose cheap candidates were scored, the training candidates run."""
    scored = [c for c in decision.get("candidates", []) if c.get("accuracy") is not None]
    return {"sizes": sorted({c["size"] for c in scored if c["strategy"] in ("linear-probe", "feature-extraction")}),
            "training": sorted(f"{c['variant']}@{c['size']}" for c in scored
                               if c["strategy"] not in ("linear-probe", "feature-extraction"))}


def costs_of(decision: dict) -> str:
    """What the plan was made from: each size's frozen pass and each training candidate's step, as timed (ms an
    image), and the parts the plan ran with their estimates and what they cost (s)."""
    costs = decision.get("costs") or {}
    frozen = {size: entry["ms"] for size, entry in (costs.get("frozen_ms_per_image") or {}).items()}
    parts = [f"{p['part']} {p['estimate_s']}/{p['spent_s']} s ({p['status']})" for p in decision.get("plan", [])]
    budget = decision.get("budget") or {}
    return (f"timed ms/image frozen {frozen} training {costs.get('training_ms_per_image')}; plan of "
            f"{budget.get('plan_seconds')} s (charged {budget.get('charged_s')}): {'; '.join(parts)}")


def measure_set(group: str, name: str, tmp: Path, fixed: list[str], single_too: bool = True,
                load: float = 0.0) -> dict:
    data, test = build(name, tmp)
    tests = sum(1 for _ in Path(test).rglob("*.png"))
    line = lambda label, acc, sec, extra="": print(  # noqa: E731
        f"  {group:<11} {name:<13} {label:<22} held-out acc {acc:.4f}  {sec:6.0f} s{extra}", flush=True)
    auto = contender(data, test, [], tmp / f"{name}-auto")
    decision = auto[2].get("decision") or {}
    line("auto", auto[0], auto[1], f"  ({'; '.join(decision.get('chosen', []))}) plan {plan_of(decision)}")
    print(f"    {costs_of(decision)}; before the fit {auto[2]['run_seconds']}", flush=True)
    loaded = None
    if load:
        workers = burn(load)
        loaded = contender(data, test, [], tmp / f"{name}-auto-loaded")
        for worker in workers:
            worker.join()
        line(f"auto, loaded {load:.0f} s", loaded[0], loaded[1], f"  plan {plan_of(loaded[2].get('decision') or {})}")
        print(f"    {costs_of(loaded[2].get('decision') or {})}; before the fit {loaded[2]['run_seconds']}", flush=True)
    single = None
    if single_too:
        single = contender(data, test, best_single(decision), tmp / f"{name}-single")
        line("best single candidate", single[0], single[1], f"  ({decision['best_single']['label']})")
    probe = strong_probe(data, test)
    line("strong probe @ 224", *probe)
    budget = f"{math.ceil(auto[1])}s"
    results = {}
    for label in fixed:
        results[label] = contender(data, test, FIXED[label] + [f"train.budget={budget}"], tmp / f"{name}-{label}")
        line(label, *results[label][:2], f"  (budget {budget})")
    best = max(results, key=lambda k: results[k][0]) if results else None
    return {"group": group, "data": name, "tests": tests, "auto": auto[:2],
            "single": single[:2] if single else None,
            "single_label": decision["best_single"]["label"], "probe": probe,
            "members": [f"{label} ({m['weight']:.2f})" for label, m in zip(decision.get("chosen", []),
                                                                           decision.get("members", []))],
            "best": (best, *results[best][:2]) if best else None,
            "search": decision.get("budget", {}).get("search_seconds"),
            "budget": auto[2].get("run_budget") or decision.get("budget", {}).get("seconds"),
            "plan": plan_of(decision), "loaded": (loaded[:2], plan_of(loaded[2].get("decision") or {}))
            if loaded else None}


def table(rows: list[dict]) -> None:
    print()
    print("| data | test images | auto (no flags) | its members (weight) | best single candidate | strong probe @ 224 "
          "| best fixed (same time) | auto wall (search) | probe wall |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        se = math.sqrt(r["auto"][0] * (1 - r["auto"][0]) / r["tests"])
        best = f"{r['best'][1]:.4f} ({r['best'][0]})" if r["best"] else "-"
        single = f"{r['single'][0]:.4f} ({r['single_label']})" if r["single"] else f"- ({r['single_label']})"
        print(f"| {r['data']} | {r['tests']:,} | {r['auto'][0]:.4f} ± {se:.4f} | {', '.join(r['members'])} | "
              f"{single} | {r['probe'][0]:.4f} | {best} | {r['auto'][1]:.0f} s "
              f"({r['search']:.0f} s) | {r['probe'][1]:.0f} s |")


def regime(name: str) -> str:
    return name.partition("-")[0]


def verdicts(rows: list[dict]) -> None:
    evaluation = [r for r in rows if r["group"] == "evaluation"] or rows
    se = lambda r: max(math.sqrt(r["probe"][0] * (1 - r["probe"][0]) / r["tests"]), 1 / r["tests"])  # noqa: E731
    drawn = [r for r in evaluation if r["data"].startswith(DRAWN)] or evaluation
    fashion = [r for r in drawn if r["data"].startswith("fmnist")]
    regimes = sorted({regime(r["data"]) for r in drawn})
    means = {g: float(np.mean([r["auto"][0] - r["probe"][0] for r in drawn if regime(r["data"]) == g]))
             for g in regimes}
    for g in regimes:
        draws = [r["auto"][0] - r["probe"][0] for r in drawn if regime(r["data"]) == g]
        print(f"  {g}: auto - strong probe over {len(draws)} draw(s): mean {100 * means[g]:+.2f} pt, "
              f"worst {100 * min(draws):+.2f} pt, each {', '.join(f'{100 * d:+.2f}' for d in draws)}")
    for label, rows_of in (("Fashion-MNIST", fashion), ("not Fashion-MNIST", [r for r in drawn if r not in fashion])):
        if not rows_of:
            continue
        worst_mean = min(means[g] for g in {regime(r["data"]) for r in rows_of})
        report(f"bench_auto[vs strong probe, mean of draws, {label}]", f"worst regime {100 * worst_mean:+.2f} pt",
               "LogisticRegressionCV @ 224", 100 * worst_mean, target=1.0)
        margin = min(r["auto"][0] - r["probe"][0] for r in rows_of)
        report(f"bench_auto[vs strong probe, worst draw, {label}]", f"{100 * margin:+.2f} pt",
               "LogisticRegressionCV @ 224", 1 + margin, target=1.0)
    fixed = [r for r in evaluation if r["best"]]
    if fixed:
        gap = min((r["auto"][0] - r["best"][1]) / se(r) for r in fixed)
        report("bench_auto[vs best fixed]", f"worst {gap:+.2f} standard errors", "best fixed, same wall time",
               1 + gap, target=0.0)
    timed = [r for r in evaluation if r["budget"]]
    if timed:
        over = max(r["auto"][1] / r["budget"] for r in timed)
        report("bench_auto[time]", f"worst wall / budget {over:.2f}", "its budget", over, target=1.1,
               higher_is_better=False)
    loaded = [r for r in rows if r["loaded"]]
    for r in loaded:
        same = r["loaded"][1] == r["plan"]
        print(f"  {r['data']} under load: plan {'the same' if same else 'different'} ({r['plan']} quiet, "
              f"{r['loaded'][1]} loaded); held-out {r['loaded'][0][0]:.4f} vs {r['auto'][0]:.4f} quiet, "
              f"{r['loaded'][0][1]:.0f} s")
    if loaded:
        report("bench_auto[plan under load]", f"{sum(r['loaded'][1] == r['plan'] for r in loaded)} of {len(loaded)} "
               "the same", "the quiet run's plan", sum(r["loaded"][1] == r["plan"] for r in loaded) / len(loaded),
               target=1.0)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--group", default="evaluation", choices=["calibration", "evaluation", "all"])
    parser.add_argument("--sets", default=None, help="comma-separated set names (default: the group's)")
    parser.add_argument("--fixed", default="linear-probe,fine-tune", help="fixed strategies to compare ('' for none)")
    parser.add_argument("--draws", type=int, default=3,
                        help="draws of each Fashion-MNIST and letters regime (seeds 11, 12, ...)")
    parser.add_argument("--first-draw", type=int, default=0,
                        help="the first draw's index (to add draws to an earlier run's: --first-draw 2 --draws 1)")
    parser.add_argument("--no-single", action="store_true", help="skip refitting the best single candidate")
    parser.add_argument("--load", type=float, default=0.0,
                        help="also run auto on the first draw of each set under CPU load for this many seconds")
    args = parser.parse_args()
    quiet_lightning()
    groups = list(GROUPS) if args.group == "all" else [args.group]
    wanted = args.sets.split(",") if args.sets else None
    fixed = [f for f in args.fixed.split(",") if f]
    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        for group in groups:
            for name in GROUPS[group]:
                if wanted is None or name in wanted:
                    draws = range(args.first_draw, args.first_draw + args.draws) if name.startswith(DRAWN) else range(1)
                    for draw in draws:
                        rows.append(measure_set(group, f"{name}-{draw}" if draw else name, Path(tmp_name), fixed,
                                                not args.no_single, args.load if draw == draws[0] else 0.0))
    table(rows)
    verdicts(rows)


if __name__ == "__main__":
    main()
