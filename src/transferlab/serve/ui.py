"""The Gradio app of `transferlab serve`: one image (upload or paste) with its top classes and
the Grad-CAM overlay of the predicted (or a chosen) class, several images at once as a gallery,
and the model card with a link to the run's report."""

from __future__ import annotations

import os
from pathlib import Path

PREDICTED = "(predicted class)"
KEEP_S = 600  # what the app wrote (uploads, answers) is kept 10 minutes: the server's sweep deletes it after
READS_ONLY = "this app reads only images uploaded to it (and its examples)"
WANTED = {"image": "an image uploaded to this app", "file": "a list of images uploaded to this app",
          "dropdown": "a class name"}  # what each input of the app's functions takes, for a malformed call


def card_markdown(card: dict) -> str:
    metrics = ", ".join(f"{k} {v:.3f}" for k, v in card["metrics"].items())
    splits = card.get("splits") or {}
    lines = [
        f"**Run** `{card['run']}` · **model** {card['model']} at {card['input_size']} px · "
        f"**strategy** {card['strategy']}",
        f"**Data** {card['source'] or 'unknown'}" + (f": {card['images']:,} images" if card.get("images") else "")
        + (" (" + ", ".join(f"{k} {v:,}" for k, v in splits.items()) + ")" if splits else ""),
        f"**Classes** ({len(card['classes'])}): " + ", ".join(card["classes"][:40])
        + (" ..." if len(card["classes"]) > 40 else ""),
        (f"**{'Test' if card['evaluated_on'] == 'test' else 'Validation'} metrics** on {card['n']:,} held-out "
         f"images: {metrics}") if card["evaluated_on"] else "**Metrics**: the run has no held-out split",
    ]
    if card["report"]:
        lines.append("[The run's full report](/report) (evaluation, calibration, errors, Grad-CAM)")
    return "\n\n".join(lines)


def inside(folder: Path, path) -> str:
    """`path` resolved (symlinks, `..`) if it is a file in the server's `folder`; else a gr.Error."""
    import gradio as gr

    try:
        real = Path(os.path.realpath(path))
    except (TypeError, ValueError):  # not a string, a NUL in it
        real = Path("/")
    if not real.is_relative_to(folder):
        raise gr.Error(READS_ONLY, print_exception=False)
    if not real.is_file():
        raise gr.Error(f"the upload is gone (kept {KEEP_S // 60} minutes): upload it again", print_exception=False)
    return str(real)


def files_only_from(app, folder: Path) -> None:
    """No block of `app` copies (or downloads: a URL) a file into Gradio's cache unless it is
    already in `folder`. Gradio's own check (see build_app) refuses other paths before this, for
    payloads with its file marker; this one also refuses URLs."""
    for block in app.blocks.values():
        async def guarded(path, move=block.async_move_resource_to_block_cache):
            return await move(inside(folder, path))

        block.async_move_resource_to_block_cache = guarded


def uploads_only(component, folder: Path, many: bool = False) -> None:
    """Pass `component`'s files to our decode path as paths in `folder`, untouched: Gradio's Image
    takes a bare {"path": ...} without any check, its preprocessing opens the file with PIL first
    (a bomb or a non-image gets an error naming internal paths), and gr.File's leaves an empty temp
    file per call. (Set on the instance: a subclass of a Gradio component makes Gradio write a
    .pyi stub next to our module.)"""

    def preprocess(payload):
        if payload is None:
            return None
        # many: a ListFiles (Gradio validated it), whose root may be empty
        paths = [inside(folder, item.path) for item in (payload.root if many else [payload])]
        return paths if many else paths[0]

    component.preprocess = preprocess


def one_of(component, choices: list[str]) -> None:
    """`component` (a Dropdown) takes one of `choices`, else a plain gr.Error (Gradio's own quotes the
    payload's repr and type: "Value: 1 (type: <class 'int'>) is not in the list of choices")."""
    import gradio as gr

    def preprocess(payload):
        if payload is None:
            return None
        if not isinstance(payload, str) or payload not in choices:
            raise gr.Error("the class to explain is not a class of this model (GET /api/info lists them)",
                           print_exception=False)
        return payload

    component.preprocess = preprocess


def malformed(block_fn) -> str:
    wanted = [WANTED.get(block.get_block_name(), block.get_block_name()) for block in block_fn.inputs]
    return (f"malformed request: {block_fn.api_name or block_fn.name} takes {len(wanted)} "
            f"input{'s' if len(wanted) != 1 else ''}: {'; '.join(wanted)}")


def plain_input_errors(app) -> None:
    """A malformed call of the app's API gets one plain line (a gr.Error, which Gradio shows with
    show_error off) instead of what Gradio's checks before our preprocess raise: a pydantic dump of
    its data model, "'int' object has no attribute 'get'", a list of component reprs, or a path.
    (Set on the instance, like the components' preprocess.)"""
    import gradio as gr
    from gradio.exceptions import InvalidPathError

    check = app.preprocess_data

    async def preprocess_data(block_fn, inputs, state, explicit_call=False):
        if len(inputs) != len(block_fn.inputs):  # Gradio drops extra values, and reprs its components on too few
            raise gr.Error(malformed(block_fn), print_exception=False)
        try:
            return await check(block_fn, inputs, state, explicit_call)
        except gr.Error:
            raise
        except InvalidPathError:  # Gradio's check of its file marker: "Cannot move PATH to the gradio cache..."
            raise gr.Error(READS_ONLY, print_exception=False) from None
        except Exception:  # noqa: BLE001 - pydantic's ValidationError, AttributeError, TypeError, ValueError
            raise gr.Error(malformed(block_fn), print_exception=False) from None

    app.preprocess_data = preprocess_data


def handlers(predictor):
    """(one, several): the app's two functions, each reading only the uploaded path it is given."""
    import gradio as gr

    from transferlab.console import warn
    from transferlab.data.decode import BadImage, read_file

    limit = predictor.model.limits.max_bytes

    def one(path: str | None, target: str | None):
        if not path:
            raise gr.Error("Drop, paste or choose an image first.", print_exception=False)
        try:
            probs, blended, _, flag = predictor.explain(read_file(Path(path), limit),
                                                        None if target == PREDICTED else target)
        except BadImage as exc:
            raise gr.Error(f"{Path(path).name}: {exc}", print_exception=False) from None
        except Exception as exc:  # a bug: the server's log says what, the user is not shown internals
            warn(f"serve: {Path(path).name}: {type(exc).__name__}: {exc}")
            raise gr.Error(f"{Path(path).name}: the server could not answer (its log says why)",
                           print_exception=False) from None
        return probs, blended, predictor.caption(probs, flag)

    def several(paths: list[str] | None):
        if not paths:
            raise gr.Error("Choose one or more images first.", print_exception=False)
        gallery, rows = [], []
        for path in paths:
            name = Path(path).name
            try:
                probs, blended, explained, flag = predictor.explain(read_file(Path(path), limit))
            except BadImage as exc:  # one bad file does not stop the others
                rows.append([name, "", None, str(exc)])
                continue
            except Exception as exc:  # a bug: in the server's log, not quoted to the user
                warn(f"serve: {name}: {type(exc).__name__}: {exc}")
                rows.append([name, "", None, "the server could not answer (its log says why)"])
                continue
            gallery.append((blended, f"{name}: {predictor.caption(probs, flag)}"))
            rows.append([name, predictor.decision(probs), round(probs[explained], 4),
                         "unfamiliar: unlike the training images" if flag.get("unfamiliar") else ""])
        return gallery, rows

    return one, several


def build_ui(predictor, examples: list[Path], folder: Path):
    import gradio as gr

    one, several = handlers(predictor)
    with gr.Blocks(title=f"transferlab · {predictor.run.name}", analytics_enabled=False) as app:
        gr.Markdown(f"# {predictor.run.name}\nA transferlab image classifier: "
                    f"{len(predictor.classes)} classes, running on {predictor.engine_name}.")
        with gr.Tab("One image"):
            with gr.Row():
                with gr.Column():
                    image = gr.Image(type="filepath", label="Image (drop, paste or click to upload)",
                                     sources=["upload", "clipboard"], elem_id="input-image", height=320)
                    uploads_only(image, folder)
                    target = gr.Dropdown([PREDICTED, *predictor.classes], value=PREDICTED,
                                         label="Class to explain", elem_id="target-class")
                    one_of(target, [PREDICTED, *predictor.classes])
                    button = gr.Button("Classify", variant="primary", elem_id="classify")
                with gr.Column():
                    decision = gr.Textbox(label="Prediction", interactive=False, elem_id="decision")
                    label = gr.Label(num_top_classes=predictor.model.task.bars(len(predictor.classes)),
                                     label=predictor.model.task.shown, elem_id="top-classes")
                    cam = gr.Image(label="Grad-CAM: where the model looks for the explained class", format="png",
                                   interactive=False, elem_id="overlay", height=320)
            if examples:
                gr.Examples([[str(p)] for p in examples], inputs=[image], label="Held-out images of this run",
                            elem_id="examples")
            button.click(one, [image, target], [label, cam, decision], api_name="predict")
            target.change(one, [image, target], [label, cam, decision], api_visibility="private")
        with gr.Tab("Several images"):
            files = gr.File(file_count="multiple", file_types=["image"], type="filepath", label="Images",
                            elem_id="input-files")
            uploads_only(files, folder, many=True)
            run_all = gr.Button("Classify all", variant="primary", elem_id="classify-all")
            gallery = gr.Gallery(label="Grad-CAM of the predicted class", columns=4, elem_id="gallery")
            table = gr.Dataframe(headers=["file", "predicted", "probability", "problem"], interactive=False,
                                 elem_id="table")
            run_all.click(several, [files], [gallery, table], api_name="predict_many")
        with gr.Accordion("Model card", open=True):
            gr.Markdown(card_markdown(predictor.card), elem_id="model-card")
    files_only_from(app, folder)
    plain_input_errors(app)
    return app
