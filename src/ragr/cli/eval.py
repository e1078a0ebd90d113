"""``ragr eval``: reranking metrics (a file or named MTEB tasks), retrieval metrics (BEIR), and run comparisons."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Optional

import typer

from ragr.cli.common import EXTRA, OVERRIDES_HELP, handle_errors


def register(app: typer.Typer) -> None:
    @app.command(name="eval", context_settings=EXTRA)
    @handle_errors
    def eval_(
        overrides: Optional[list[str]] = typer.Argument(None, help=OVERRIDES_HELP, show_default=False),
        print_config: bool = typer.Option(False, "--print-config", help="Print the composed, resolved config and exit."),
        quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or tables."),
        compare: bool = typer.Option(False, "--compare", help="Compare instead: the arguments are run folders or eval.json "
                                     "files (a training run gives before/after), or models (folders, aliases, hub ids) "
                                     "evaluated now on the same data; writes compare.md, compare.json and compare.png."),
        metrics: str = typer.Option("map,mrr@10,ndcg@10", "--metrics", help="--compare: comma-separated metrics to show."),
        output: Optional[str] = typer.Option(None, "--output", "-o", help="--compare: folder for compare.md / compare.json / "
                                             "compare.png (default: output_dir)."),
    ) -> None:
        """Evaluate a model: reranking data, named MTEB reranking tasks, or retrieval on a BEIR folder.

        Examples: ragr eval model.name_or_path=runs/x/model data.eval=dev.jsonl |
        ragr eval model.name_or_path=bge-reranker-base eval.tasks=[C-MTEB] data.tasks_dir=tasks |
        ragr eval data=beir-local data.beir=scifact eval.reranker=bge-reranker-base |
        ragr eval --compare runs/base runs/tuned | ragr eval --compare minilm runs/x/model data.eval=dev.jsonl
        """
        from ragr.config import compose_config, to_yaml
        from ragr.eval.report import print_report, write_json
        from ragr.ui import Console

        args = overrides or []
        if compare:
            _compare(args, metrics, output, quiet)
            return
        cfg = compose_config("eval", args)
        if print_config:
            typer.echo(to_yaml(cfg), nl=False)
            return
        console = Console(quiet=quiet)
        out = Path(cfg["output_dir"])
        report = _evaluate(cfg, console, args, out)
        path = write_json(out / "eval.json", report)
        print_report(console, report)
        console.print(f"written to [bold]{path}[/]")


# ---------------------------------------------------------------------------------------------
# Loading the model
# ---------------------------------------------------------------------------------------------


def eval_family(model_cfg: dict) -> str:
    """The family to evaluate: read from the model's files when name_or_path is a saved model, else the config's.

    A non-default family chosen in the config (``model=colbert`` on a plain backbone) wins over what the
    files look like, unless the folder was saved by ragr for a family (its ``ragr.json``) or holds a
    ColBERT head: then the files are authoritative.
    """
    from ragr.errors import UserError
    from ragr.infer.detect import detect_family

    path = Path(str(model_cfg["name_or_path"])).expanduser()
    saved_for_a_family = (path / "ragr.json").is_file() or (path / "colbert_linear.pt").is_file()
    if model_cfg["family"] != "embedder" and not saved_for_a_family:
        return model_cfg["family"]
    if path.is_dir():
        try:
            return detect_family(path)
        except UserError:
            pass
    return model_cfg["family"]


def _load_embedder(model_cfg: dict):
    from ragr.device import default_device
    from ragr.models import build_model

    if model_cfg["family"] == "embedder":
        model = build_model(model_cfg)
    else:
        from ragr.models.embedder import Embedder

        model = Embedder.from_pretrained(model_cfg["name_or_path"])
    return model.to(default_device()).eval()


def _rerank_evaluator(cfg: dict) -> tuple[str, Callable[..., dict], Callable[[list], int]]:
    """(family, evaluate(rows, progress) -> metrics, count(rows) -> progress total) for the configured model.

    One path for every family (:func:`ragr.eval.rerank.evaluate`): the configured family builds the model
    and its scorer scores; a folder holding another family is loaded through the Reranker API.
    """
    from ragr.device import default_device
    from ragr.eval.rerank import count_items, evaluate
    from ragr.families import get_family
    from ragr.infer.reranker import Reranker
    from ragr.registry import families

    family = eval_family(cfg["model"])
    bs, ks = cfg["eval"]["batch_size"], cfg["eval"]["ks"]
    if family == "embedder":
        scorer = get_family("embedder").scorer(_load_embedder(cfg["model"]))
    elif family == cfg["model"]["family"] and family in families:
        fam = get_family(family)
        scorer = fam.scorer(fam.build(cfg["model"]).to(default_device()).eval())
    else:
        scorer = Reranker(cfg["model"]["name_or_path"], family=family, batch_size=bs)
    return (family, lambda rows, progress: evaluate(scorer, rows, batch_size=bs, ks=ks, progress=progress),
            lambda rows: count_items(scorer, rows))


# ---------------------------------------------------------------------------------------------
# Modes
# ---------------------------------------------------------------------------------------------


def _evaluate(cfg: dict, console, args: list[str], out: Path) -> dict[str, Any]:
    """The report of the mode the config asks for: retrieval (data.beir), named tasks (eval.tasks) or a file."""
    from ragr.errors import UserError

    data = cfg["data"]
    if data.get("beir"):
        return _retrieval(cfg, console, out)
    if cfg["eval"].get("tasks"):
        return _tasks(cfg, console, args)
    if data.get("eval"):
        return _rerank_file(cfg, console)
    raise UserError("nothing to evaluate: set data.eval=FILE (reranking data), eval.tasks=[NAME,...] "
                    "(named reranking tasks) or data.beir=DIR (retrieval)")


def _rerank_file(cfg: dict, console) -> dict[str, Any]:
    from ragr.data.formats import load_rerank_file

    rows = load_rerank_file(cfg["data"]["eval"], columns=cfg["data"].get("columns"))
    family, run, count = _rerank_evaluator(cfg)
    with console.progress("eval", count(rows)) as advance:
        metrics = run(rows, advance)
    return {"model": cfg["model"]["name_or_path"], "family": family, "data": cfg["data"]["eval"], "metrics": metrics}


def _tasks(cfg: dict, console, overrides: list[str]) -> dict[str, Any]:
    from ragr.eval.mteb import average_metrics, load_task, resolve_tasks

    tasks = resolve_tasks(cfg["eval"]["tasks"])
    # data.eval names the local copy of a single task only when given on the command line (the data
    # group's default dev file is not a copy of a named task)
    single = cfg["data"]["eval"] if len(tasks) == 1 and any(o.startswith("data.eval=") for o in overrides) else None
    loaded = {t.name: load_task(t, cfg["data"].get("tasks_dir"), single) for t in tasks}  # all data before the model
    family, run, count = _rerank_evaluator(cfg)
    per_task: dict[str, Any] = {}
    for task in tasks:
        got = loaded[task.name]
        with console.progress(task.name, count(got["rows"])) as advance:
            metrics = run(got["rows"], advance)
        per_task[task.name] = {"source": got["source"], "split": task.split, "num_dropped": got["num_dropped"],
                               "metrics": metrics}
    average = average_metrics({n: t["metrics"] for n, t in per_task.items()})
    return {"model": cfg["model"]["name_or_path"], "family": family, "tasks": per_task, "average": average,
            "metrics": average}


def _is_sparse(family: str) -> bool:
    from ragr.families import get_family
    from ragr.registry import families

    return family in families and "sparse" in get_family(family).produces


def _load_sparse(model_cfg: dict, family: str):
    """The sparse model (``encode_sparse``) of the configured family, or of the family the folder holds."""
    from ragr.device import default_device
    from ragr.families import get_family

    fam = get_family(family)
    if family == model_cfg["family"]:
        return fam.build(model_cfg).to(default_device()).eval()
    return fam.scorer_class().load(str(model_cfg["name_or_path"]), device=str(default_device())).model


def _retrieval(cfg: dict, console, out: Path) -> dict[str, Any]:
    from ragr.errors import UserError
    from ragr.eval.retrieval import evaluate_retrieval, load_beir, write_trec_run

    ev = cfg["eval"]
    family = eval_family(cfg["model"])
    sparse = _is_sparse(family)
    if family != "embedder" and not sparse:
        raise UserError(f"retrieval evaluation searches with an embedder or a sparse model, and {cfg['model']['name_or_path']} "
                        f"is a {family} model; pass one of those as model.name_or_path and this one as eval.reranker")
    data = load_beir(cfg["data"]["beir"], cfg["data"].get("split"))
    model = _load_sparse(cfg["model"], family) if sparse else _load_embedder(cfg["model"])
    reranker = None
    if ev.get("reranker"):
        from ragr.infer.reranker import Reranker

        reranker = Reranker(ev["reranker"], family=ev.get("reranker_family"), batch_size=ev["batch_size"])
    ks = sorted(set(ev["ks"]) | {ev["top_k"]})
    if sparse:  # term weights searched through an inverted index (scipy CSR), exact
        from ragr.eval.retrieval import evaluate_sparse_retrieval

        res = evaluate_sparse_retrieval(model, data, top_k=ev["top_k"], ks=ks, batch_size=ev["batch_size"], reranker=reranker,
                                        rerank_top_k=min(ev["rerank_top_k"], ev["top_k"]), console=console)
    else:
        res = evaluate_retrieval(model, data, top_k=ev["top_k"], ks=ks, batch_size=ev["batch_size"], reranker=reranker,
                                 rerank_top_k=min(ev["rerank_top_k"], ev["top_k"]), search=ev["search"], console=console)
    runs = {}
    if ev.get("save_run", True):
        out.mkdir(parents=True, exist_ok=True)
        for stage, run in res["runs"].items():
            path = out / f"run.{stage}.trec"
            write_trec_run(path, run, tag=f"ragr-{stage}")
            runs[stage] = str(path)
    stages = res["stages"]
    return {"model": cfg["model"]["name_or_path"], "family": family, "data": data.path, "split": data.split,
            "num_docs": len(data.doc_ids), "reranker": ev.get("reranker"), "top_k": ev["top_k"],
            "rerank_top_k": min(ev["rerank_top_k"], ev["top_k"]) if reranker is not None else None,
            "stages": stages, "runs": runs, "metrics": stages["rerank" if "rerank" in stages else "retrieval"]}


MODEL_FILES = ("config.json", "modules.json", "ragr.json", "adapter_config.json", "colbert_linear.pt")


def _compare_model(item: str) -> str | None:
    """The model ``item`` names for --compare (a model folder, a run folder's model/, an alias or hub id), or None
    for a report (an eval.json, or a folder holding one)."""
    from ragr.models.hub import _HUB_ID, ALIASES

    path = Path(item).expanduser()
    if path.is_file() or (path / "eval.json").is_file():
        return None
    for folder in (path, path / "model"):
        if folder.is_dir() and any((folder / f).is_file() for f in MODEL_FILES):
            return str(folder)
    if not path.exists() and _HUB_ID.match(ALIASES.get(item, item)) and not item.startswith((".", "/", "~")):
        return item
    return None  # load_results says what is missing


def _model_label(item: str, model: str) -> str:
    path = Path(model)
    if not path.exists():
        return item
    path = path.resolve()
    return f"{path.parent.name}/{path.name}" if path.name in ("model", "best") and path.parent.name else path.name


def _compare(args: list[str], metrics: str, output: str | None, quiet: bool) -> None:
    """Reports are read; models are evaluated now, each with the same config (the overrides: data.eval, family ...)."""
    import copy

    from ragr.config import compose_config
    from ragr.errors import UserError
    from ragr.eval.report import compare_entries, load_results, report_entries
    from ragr.ui import Console

    items = [a for a in args if Path(a).expanduser().exists() or "=" not in a]
    rest = [a for a in args if a not in items]
    if not items:
        raise UserError("--compare needs run folders, eval.json files or models (folders, aliases, hub ids)")
    console = Console(quiet=quiet)
    models = {item: _compare_model(item) for item in items}
    cfg = compose_config("eval", rest) if output is None or any(models.values()) else None
    output = output or cfg["output_dir"]
    sources = []
    for item in items:
        if models[item] is None:
            sources.append((item, load_results(item)))
            continue
        run = copy.deepcopy(cfg)
        run["model"]["name_or_path"] = models[item]
        run["eval"]["save_run"] = False
        report = _evaluate(run, console, rest, Path(output))
        sources.append((item, report_entries(report, _model_label(item, models[item])) or []))
    names = [m.strip() for m in metrics.split(",") if m.strip()]
    result = compare_entries(sources, output, names)
    typer.echo(result["markdown"], nl=False)
    console.print(f"written to [bold]{result['md_path']}[/], [bold]{result['json_path']}[/] and "
                  f"[bold]{result['png_path']}[/]")
