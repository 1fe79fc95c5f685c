"""`transferlab train` and `transferlab cv`: one entry point, `run_experiment`, in the shape of scikit-learn's
`cross_validate -> _fit_and_score` (training is cross-validation with one split; docs/architecture.md)."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import numpy as np

from transferlab.config import Config, budget_seconds, load_config, merge, unflatten
from transferlab.console import info, warn
from transferlab.data import load_dataset
from transferlab.data.splits import Splitter, check_folds
from transferlab.errors import DataError, DivergedError
from transferlab.features import FeatureStore
from transferlab.fit import FitContext, fit
from transferlab.preprocess import backbone_defaults
from transferlab.record import write_dataset_json
from transferlab.rundir import STATE_FILE, RunDir, RunState, check_out_dir, is_worker_process, resume_config
from transferlab.tracking import Tracker, check_tracking, run_tags

SIZES = (96, 128, 160, 224)  # input sizes auto's search tries up to the backbone's own, unless --size


@dataclass
class Fold:
    """One split of the data: its parts, where it is written, how it is named."""

    name: str
    run: RunDir  # the fold's own folder and state (train: the run itself)
    indices: dict[str, np.ndarray]
    repeat: int = 0
    fold: int = 0


@dataclass(frozen=True)
class RunOptions:
    """How a run is opened and watched (not what it computes: that is the config)."""

    out: str | Path | None = None  # the run directory (default: runs/<date>-<strategy>)
    resume: str | Path | None = None  # an interrupted run to continue, with the config it recorded
    progress: bool = True
    extra_callbacks: list | tuple = ()  # Lightning callbacks added to every stage
    resume_overrides: list[str] | tuple = ()  # resume-safe `key=value` changes to a resumed run's config


def run_training(data: str | None, config: Config, **options) -> Path:
    """Train a classifier on DATA (one stratified train / val / test split); returns the run directory.
    `options` are RunOptions' fields."""
    return run_experiment("train", data, config, RunOptions(**options))


def run_cv(data: str | None, config: Config, **options) -> Path:
    """Cross-validate on DATA (K stratified folds); returns the run directory with cv_metrics.json."""
    return run_experiment("cv", data, config, RunOptions(**options))


def run_experiment(kind: str, data: str | None, config: Config, options: RunOptions) -> Path:
    """Open or resume a run, fit and score each of its folds, write what it found."""
    from transferlab.machine import Snapshot
    from transferlab.record import finish_cv

    started, clock, progress, resume = time.time(), time.monotonic(), options.progress, options.resume
    machine = Snapshot.now()  # what other programs take of the CPUs before the fit, the plan gets back
    show = progress and not is_worker_process()
    with contextlib.ExitStack() as stack:
        if resume is not None:
            run, config = RunDir.reopen(stack, resume, options.resume_overrides)
            dataset = load_dataset(config.data.source, config, progress=show)
        else:
            run, config, dataset = new_run(stack, kind, data, config, options.out, show)
        L.seed_everything(config.seed, workers=True, verbose=False)
        tracker = Tracker.open(config, run.state, name=run.path.name,
                               tags={**run_tags(config, run.path), "transferlab.kind": "cv" if kind == "cv" else "run"})
        run.save_state()
        folds = split(kind, dataset, config, run, fresh=resume is None, show=show)
        if config.audit.enabled and not is_worker_process():  # the audit's slowest part, before the budget's
            from transferlab.audit import near_of  # plan: what it cost is known when the search divides the rest

            near_of(dataset, config, progress=show)
        store = FeatureStore(dataset, config, progress=show)
        budget = budget_seconds(merge(config, {"strategy": {"name": run.state.requested}}, origin=kind))
        if show and tracker.describe():
            info(tracker.describe())
        try:
            for number, fold in enumerate(folds, start=1):
                if fold.name in run.state.done:
                    continue
                if kind == "cv" and show:
                    fitted = len(fold.indices["train"]) + len(fold.indices["val"])
                    info(f"[{number}/{len(folds)}] {fold.name}: train {fitted:,}, test {len(fold.indices['test']):,}")
                before, after = round(time.monotonic() - clock, 1), 0.0
                if budget is None:
                    share = None
                elif kind == "train":  # the whole run within the budget: what came before, and what comes after
                    after = after_fit_seconds(dataset, config, fold.indices)
                    share = budget - before - fold.run.state.seconds - after
                    if show:
                        info(f"budget {budget / 60:.1f} min: {before:.0f} s spent before the fit (decoding, splitting"
                             f"{', near-duplicates' if config.audit.enabled else ''}), about {after:.0f} s kept for "
                             "what comes after it (evaluation, the audit, the report)")
                else:
                    share = budget / len(folds) - fold.run.state.seconds
                spent = {"budget": budget, "before_fit": before} | ({"kept_after": round(after, 1),
                                                                      "taken_by_others": round(
                                                                          machine.taken_by_others(), 1)}
                                                                     if budget is not None and kind == "train" else {})
                ctx = FitContext(dataset, fold.indices, config, fold.run.path, store, seconds=spent,
                                 deadline=None if share is None else time.monotonic() + share, progress=progress,
                                 callbacks=tuple(options.extra_callbacks),
                                 tracker=tracker if kind == "train" else Tracker.open(
                                     config, fold.run.state, name=fold.name, parent=tracker,
                                     tags={"transferlab.kind": "fold"}))
                fit_and_score(kind, ctx, fold, started)
                run.state.done.append(fold.name)
                run.save_state()
            if kind == "cv" and not is_worker_process():
                finish_cv(run, dataset, config, [(f.repeat, f.fold, f.name) for f in folds], started, tracker,
                          pictures)
        except BaseException as exc:
            if not is_worker_process():
                interrupted = isinstance(exc, KeyboardInterrupt)
                if interrupted:
                    warn(f"interrupted: continue with `transferlab {kind} --resume {run.path}`")
                tracker.finish("KILLED" if interrupted else "FAILED")
                if isinstance(exc, DivergedError):  # resuming with the same settings would diverge again
                    run.state.failed = str(exc)
                    run.save_state()
            raise
        run.state.finished = True
        run.save_state()
        tracker.finish()
    return run.path


# what a train run spends after its fit, as measured on 2 cores (each run records its own in metrics.json
# `seconds`): the pictures and the report (13 s at 1,000 images: error examples and the dataset's
# pictures are samples), and the audit's findings from the features (0.2 s at 1,000 images, ~10 s at 60,000; its
# near-duplicate pass runs before the fit, where its cost is known). The evaluation is the final fit's share.
REPORT_S = 15.0
AUDIT_S, AUDIT_PER_IMAGE_S = 1.0, 2e-4


def after_fit_seconds(dataset, config: Config, indices) -> float:
    """Seconds a train run will spend after its fit, kept out of the fit's share of train.budget so that the
    whole run keeps to it: the audit's findings and the report."""
    after = REPORT_S if config.train.report else 0.0
    if config.audit.enabled:
        after += AUDIT_S + AUDIT_PER_IMAGE_S * len(dataset)
    return after


def new_run(stack, kind: str, data, config: Config, out, show: bool):
    """(run, config, dataset) of a new run, everything checked before its folder exists."""
    if data is None:
        raise DataError("no DATA given: pass a folder, a CSV manifest or builtin:NAME")
    requested, sized = config.strategy.name, config.strategy.auto.sizes is not None or config.preprocess.size
    config = resolve_config(config, data)
    check_out_dir(out)
    check_tracking(config)
    dataset = load_dataset(data, config, progress=show, compact=True)
    dataset.require_classes()
    if dataset.spec.size < config.preprocess.size:  # stored at the images' own size; the model keeps its own
        config = merge(config, {"model": {"size": config.model.size or config.preprocess.size},
                                "preprocess": {"size": dataset.spec.size}}, origin="the images' own size")
        if requested == "auto" and not sized:  # the search tries sizes near the images' own too
            from transferlab.search import sizes_near

            near = sizes_near(dataset.spec.size, config.model.size)
            config = merge(config, {"strategy": {"auto": {"sizes": sorted({*config.strategy.auto.sizes, *near})}}},
                           origin="the images' own size")
    if kind == "cv":
        check_folds(dataset.labels, config.cv.folds, dataset.classes)
    from transferlab.models import create_backbone

    create_backbone(config.model.name, pretrained=config.model.pretrained, weights=config.model.weights,
                    img_size=config.model.size or dataset.spec.size)  # unusable weights fail before a run exists
    label = f"cv{config.cv.folds}-{requested}" if kind == "cv" else requested
    run = RunDir.create(stack, out, label, config, RunState(kind=kind, data=data, requested=requested))
    if show:
        for message in dataset.warnings:
            warn(message)
        if dataset.skipped:
            warn(f"{len(dataset.skipped)} file(s) skipped (listed in {run.path / 'dataset.json'})")
    return run, config, dataset


def resolve_config(config: Config, data: str) -> Config:
    """The config with every default that depends on the data or the backbone filled in (the
    strategy fills its own when it is settled): the image size (auto: the largest size its search
    tries), the interpolation, the weight decay."""
    defaults = backbone_defaults(config.model.name)
    size = config.preprocess.size
    if config.strategy.name == "auto":  # the sizes auto's search tries; the images are stored at the largest
        sizes = config.strategy.auto.sizes or ([size] if size is not None else [
            s for s in SIZES if s < defaults["size"]] + [min(defaults["size"], max(SIZES))])
        config = merge(config, {"strategy": {"auto": {"sizes": sorted(set(sizes))}}}, origin="auto")
        size = max(sizes)
    pre = dataclasses.replace(config.preprocess, size=defaults["size"] if size is None else size,
                              interpolation=config.preprocess.interpolation or defaults["interpolation"])
    optim = dataclasses.replace(config.optim, weight_decay=config.optim.decay())
    config = dataclasses.replace(config, preprocess=pre, optim=optim,
                                 data=dataclasses.replace(config.data, source=data))
    if config.strategy.name != "auto":
        from transferlab.strategies import get_strategy

        get_strategy(config.strategy.name, config)  # an unknown name or bad settings fail before anything runs
    return config


def split(kind: str, dataset, config: Config, run: RunDir, *, fresh: bool, show: bool) -> list[Fold]:
    """The folds of a run, from the one splitter (made and written when it starts, read back when it
    resumes), each with its own folder and state; what the split was is recorded in the run's state."""
    splitter = Splitter(kind, config)
    if fresh and config.data.dedupe == "near":  # near-duplicates stay in one split, as byte-identical copies do
        from transferlab.audit import keep_near_together

        moved = keep_near_together(dataset, config, progress=show)
        if show:
            info(f"data.dedupe=near: {moved:,} images joined a near-duplicate's split group")
    parts = splitter.split(dataset, run.path, fresh=fresh)
    if fresh:
        run.state.split = splitter.describe(dataset)
        run.save_state()
    if kind == "train":
        (part,) = parts
        write_dataset_json(run.path, dataset, part.indices)
        if show:
            info(f"{len(dataset):,} images, {len(dataset.classes)} classes; split "
                 + ", ".join(f"{k} {len(v):,}" for k, v in part.indices.items()) + f"; run directory {run.path}")
        return [Fold(part.name, run, part.indices)]
    if fresh:
        write_dataset_json(run.path, dataset, {f"fold{p.fold + 1}": p.indices["test"] for p in parts if p.repeat == 0})
    if show:
        info(f"{len(dataset):,} images, {len(dataset.classes)} classes; {config.cv.folds}-fold CV"
             + (f" x {config.cv.repeats} repeats" if config.cv.repeats > 1 else "")
             + f"; strategy {run.state.requested}; run directory {run.path}")
    return [Fold(p.name, RunDir(p.folder, RunState.load_or(p.folder / STATE_FILE, kind="fold",
                                                           requested=run.state.requested)), p.indices, p.repeat, p.fold)
            for p in parts]


def settle(ctx: FitContext, run: RunDir):
    """The strategy of a fold: read back from its state, or settled now (auto searches on this
    fold's training part only) and recorded, with the concrete config, before any stage runs."""
    from transferlab.strategies import get_strategy

    state = run.state
    if state.strategy:
        return get_strategy(state.strategy, ctx.config), state.decision
    if state.requested == "auto":
        from transferlab.search import choose

        choice = choose(ctx)
        config = merge(ctx.config, unflatten(choice.overrides | {"strategy.name": choice.strategy}), origin="auto")
        strategy, decision = get_strategy(choice.strategy, config), choice.record
    else:
        strategy, decision = get_strategy(state.requested, ctx.config), None
    state.strategy, state.decision = strategy.name, decision
    run.save_config(strategy.config)
    return strategy, decision


def fit_and_score(kind: str, ctx: FitContext, fold: Fold, started: float) -> None:
    """Settle the fold's strategy, fit it, and write what it scored (train: the run's model, record
    and report; cv: the fold's record and out-of-fold predictions)."""
    from transferlab.record import finish_fold, finish_train

    if kind == "cv" and fold.run.state.strategy:  # the fold's own config holds what its strategy decision set
        ctx = ctx.replace(config=resume_config(fold.run.path, fold.run.state))
    strategy, decision = settle(ctx, fold.run)
    result = fit(ctx, strategy, fold.run)
    if kind == "train":
        finish_train(result, ctx, fold.run, decision, started, pictures)
    else:
        finish_fold(result, ctx, fold, decision, pictures)


def pictures(run_dir: Path, dataset, config: Config, model=None, examples=None, *, report: bool = True) -> None:
    """What needs the images (the dataset's pictures, the model's error examples) and the report."""
    if not config.train.report:
        return
    from transferlab.report import safe_build_report
    from transferlab.report.gallery import dataset_pictures, save_error_examples

    if examples is not None:
        save_error_examples(model, dataset, *examples, run_dir / "errors.npz", seed=config.seed)
    if report:
        dataset_pictures(run_dir, dataset, config)
        safe_build_report(run_dir)


def summary_line(run_dir: Path) -> str:
    """`test (150 images): accuracy 0.912 [0.867, 0.953], ...` of the test split (or val) of a finished run: each
    metric with its 95% interval (a bootstrap of the split's images)."""
    from transferlab.io import read_json
    from transferlab.metrics import headline, with_interval

    metrics = read_json(Path(run_dir) / "metrics.json")
    part = "test" if "test" in metrics else "val"
    if part not in metrics:
        return "no evaluation split"
    scored = metrics[part]
    return (f"{part} ({scored.get('n', 0):,} images): " + ", ".join(
        f"{k} {with_interval(v, (scored.get('ci95') or {}).get(k))}" for k, v in headline(scored).items()
        if v is not None) + " (95% intervals: a bootstrap of its images)")


def demo_config() -> Config:
    """The demo's settings: a stratified subset, light augmentation, the default strategy, 3 minutes."""
    return load_config(overrides=["data.subset=60", "augment.preset=light", "train.budget=3m"])


def run_demo(out: str | Path | None = None, progress: bool = True) -> Path:
    """The whole path on Fashion-MNIST (a stratified subset; digits if it is not installed) on a CPU
    in minutes, with the default `auto` strategy, so the demo shows the measured decision too."""
    from transferlab.data.builtins import fashion_mnist_or_digits

    data, why = fashion_mnist_or_digits()
    if why:
        warn(why)
    return run_training(data, demo_config(), out=out, progress=progress)
