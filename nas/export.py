"""``python -m nas.export runs/NAME``: the chosen trial as a standalone, re-parameterizable network.

Writes (by default to ``runs/NAME/export/``):

- ``model.py``: imports only torch and the standard library; holds the code of exactly the operators the
  architecture uses (lifted from ``operators/`` and ``nas/network.py`` by ``nas._codegen``), and exposes
  ``build(num_classes, in_chans)`` and ``reparameterize_model(model)``. Its state_dict keys are those of
  ``nas.network.build(arch)``, so weights move between the two;
- ``arch.yaml``: the Arch; ``README.md``: figures and how to use it;
- ``deploy/model.pt2``: the re-parameterized network at the target input as a ``torch.export`` program
  (``torch.export.load``); ``deploy/model.onnx`` too when onnx, onnxscript and onnxruntime are installed
  (``pip install opmix[export]``) and ``--no-onnx`` is not given, with a dynamic batch dimension (a fixed
  batch of 2 when the dynamic one cannot be exported);
- ``model.safetensors``: the training-form weights, when ``--weights`` gave some.

Before it reports success the export checks itself, and a failed check is an error: the standalone model
with the framework model's weights gives the framework's outputs; its deploy-form FLOPs are those the search
recorded; its re-parameterized outputs equal its training-form ones (rtol 1e-4, atol 1e-5); the deploy
programs' outputs match within 1e-4. Without ``--weights`` the checks use BatchNorm statistics and affine
parameters drawn at random, so that the folds are exercised on something other than the identity.
Everything is written to a temporary folder next to the output and moved into place at the end, so a failed
export leaves nothing half-written, and an existing output is only replaced with ``--force``.

An ONNX conversion that fails (``torch.onnx.export`` raises, at the dynamic batch and at the fixed one, or
ONNX Runtime cannot load or run the file) stops the export: one line on stderr naming the stage(s) and
operator(s) of the arch whose conversion fails and the way out, ``--no-onnx``, and exit code 2. Nothing is
written then and an existing output is left as it was. Stopping, rather than going on without
``model.onnx``, keeps the promise above: an export that reports success with the packages installed holds
a checked ONNX file, so a pipeline that reads it is never handed a folder without it; ``--no-onnx`` asks
for the folder without it explicitly (``model.pt2`` runs the same network). A network that ``torch.export``
cannot trace (at either batch) stops the export the same way, with ``--no-pt2`` as the way out.
"""

from __future__ import annotations

import copy
import datetime
import importlib
import importlib.util
import os
import shutil
import sys
import textwrap
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

import torch
from torch import nn

from . import _cli, plugins
from .arch import Arch, dump_arch
from .pareto import analyze
from .rundir import arch_line, load_run
from .errors import OpmixError

__all__ = ["export", "pick_trial", "ExportCheckError", "OnnxConversionError", "Pt2ExportError"]

PROG = "python -m nas.export"
INIT_SEED = 0  # torch.manual_seed(INIT_SEED); build() gives the weights an export without --weights carries


class ExportCheckError(RuntimeError):
    """A self-check of the export failed: the exported network is not the searched one."""


class OnnxConversionError(OpmixError):
    """The deploy network does not convert to ONNX (or ONNX Runtime cannot run it); ``--no-onnx`` skips it."""


class Pt2ExportError(OpmixError):
    """``torch.export`` cannot trace the deploy network (a plug-in operator's Python control flow on tensor
    values, say); ``--no-pt2`` skips ``deploy/model.pt2``."""


def pick_trial(records: list[dict[str, Any]], budget: float | None, trial: str | None,
               objectives: tuple[str, ...] = ("accuracy", "flops"), latency_budget_ms: float | None = None
               ) -> dict[str, Any]:
    """The recommended pick (``nas.pareto.analyze``: the best mean confirmed accuracy within the budget, or
    without confirmations the most accurate completed trial), or the one named ``trial`` (a trial id, or a
    reference's name); a confirmed one carries ``confirmed``: its mean, sd, seeds, accuracies and fidelity."""
    completed = [r for r in records if r["status"] == "completed"]
    listing = ", ".join(str(r["trial_id"]) for r in completed[:12]) + (" ..." if len(completed) > 12 else "")
    analysis = analyze(records, budget, objectives, latency_budget_ms)
    if trial is None:
        if analysis["best"] is None:
            raise OpmixError("the run has no completed trial within the budget yet; wait for the search, or pass "
                             "--trial ID" + (f" (completed: {listing})" if completed else ""))
        return _with_confirmation(analysis["best"], analysis)
    name = trial.removeprefix("ref-")  # a reference by its name, whatever id its record has: runs written
    # before references were recorded as ref-NAME kept one that lies in the space under its Optuna number
    matches = [r for r in records if "confirms" not in r
               and (str(r["trial_id"]) in (trial, f"ref-{trial}") or r.get("reference") == name)]
    if not matches:
        raise OpmixError(f"--trial {trial}: no such trial in the run; completed trials: {listing or 'none yet'}")
    record = matches[-1]
    if record["status"] != "completed":
        why = record.get("note") or record.get("error") or ""
        raise OpmixError(f"--trial {trial} is {record['status']}{f' ({why})' if why else ''}, not completed; "
                         f"export a completed trial: {listing or 'none yet'}")
    return _with_confirmation(record, analysis)


def _with_confirmation(record: dict[str, Any], analysis: dict[str, Any]) -> dict[str, Any]:
    entry = next((e for e in analysis["confirmed"] if e["trial_id"] == record["trial_id"]), None)
    if entry is None:
        return record
    return {**record, "confirmed": {k: entry[k] for k in ("mean", "sd", "seeds", "accuracies", "fidelity")}}


def _accuracy_text(record: dict[str, Any]) -> str:
    """'confirmed accuracy 0.8123 ± 0.0040 over 2 seeds (3072 images x 4 epochs); proxy accuracy 0.7900'."""
    proxy = f"proxy accuracy {record['accuracy']:.4f}"
    c = record.get("confirmed")
    if c is None:
        return proxy
    fid = c["fidelity"]
    at = f" ({fid['train_images']} images x {fid['epochs']} epochs)" if "train_images" in fid else ""
    sd = "" if c["sd"] is None else f" ± {c['sd']:.4f}"
    return f"confirmed accuracy {c['mean']:.4f}{sd} over {len(c['seeds'])} seed(s){at}; {proxy}"


def _latency_lines(latency: list[dict[str, Any]]) -> list[str]:
    """'Latency, deploy program: 12.31 ms (median 12.40, IQR 0.21) on ort-cpu, 1 thread, batch 1 (CPU model)'."""
    return [f"Latency, deploy program: {t['ms']:.2f} ms (median {t['median_ms']:.2f}, IQR {t['iqr_ms']:.2f}) on "
            f"{t['target']} ({t['device']}), measured at export" for t in latency]


def _measure_latency(deploy: nn.Module, arch: Arch, folder: Path, report: dict[str, Any], targets: tuple,
                     log: Callable[[str], None]) -> list[dict[str, Any]]:
    """Time the deploy network on each target: ``ort-cpu`` runs ``model.onnx`` when it was written with a
    dynamic batch (else a program exported at the target's batch), the others the deploy module."""
    from .latency import measure_module

    out = []
    for target in targets:
        shape = (target.batch, arch.in_chans, arch.input_size, arch.input_size)
        path = folder / "model.onnx"
        use = path if target.name == "ort-cpu" and report.get("onnx_dynamic_batch") and path.is_file() else None
        timing = measure_module(copy.deepcopy(deploy), shape, target, onnx_path=use)
        fp = target.fingerprint()
        out.append({"target": target.describe(), "device": fp.get("gpu") or fp["cpu"], **timing.to_dict()})
        log(f"  latency on {target.describe()}: {timing.text()}")
    return out


def _header(arch: Arch, record: dict[str, Any], run_path: Path, train_flops: int, params: int,
            latency: list[dict[str, Any]] = ()) -> str:
    import operators

    papers = []
    for s in arch.stages:
        for paper in (operators.get_spec(s.op).paper or "").split("; "):
            if paper and paper not in papers:
                papers.append(paper)
    lines = [
        f"{_title(record)} of the opmix search {run_path.name}, as a standalone network (exported "
        f"{datetime.date.today().isoformat()}).",
        "",
        f"Stages (op xdepth width): {arch_line(arch.to_dict())}",
        f"Stem {arch.stem.type} {arch.stem.width}, head {arch.head.type}; input {arch.in_chans}x{arch.input_size}x"
        f"{arch.input_size}, {arch.num_classes} classes.",
        f"FLOPs (multiply-adds): {record['flops'] / 1e9:.3f} G deployed, {train_flops / 1e9:.3f} G in training form.",
        f"Parameters: {params / 1e6:.2f} M (training form). In the search: {_accuracy_text(record)}.",
        *_latency_lines(latency),
        "",
        "Operators, from their papers:",
        *[f"- {p}" for p in papers],
        "",
        "Only torch and the standard library are needed. ``build()`` makes the network in training form;",
        "``reparameterize_model(model)`` returns its deploy form (BatchNorms and parallel branches folded into",
        "single convolutions) with the same outputs. State-dict keys are those of opmix's",
        "``nas.network.build(arch)``. The code below is opmix's own operator code, cut to what this network uses.",
    ]
    return "\n".join(textwrap.fill(line, 116, subsequent_indent="  ") if line else line for line in lines)


def _title(record: dict[str, Any]) -> str:
    return f"Reference {record['reference']}" if record.get("reference") else f"Trial {record['trial_id']}"


def _import_file(path: Path) -> ModuleType:
    name = f"opmix_export_{os.getpid()}_{id(path)}"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    finally:
        sys.modules.pop(name, None)
    return module


def _randomize_bn(model: nn.Module, seed: int = 0) -> None:
    """BatchNorm statistics and affine parameters drawn at random (the checks' stand-in for training)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                n = m.num_features
                m.running_mean.copy_(0.1 * torch.randn(n, generator=gen))
                m.running_var.copy_(0.5 + torch.rand(n, generator=gen))
                if m.affine:
                    m.weight.copy_(1 + 0.1 * torch.randn(n, generator=gen))
                    m.bias.copy_(0.1 * torch.randn(n, generator=gen))


def _check_close(what: str, got: torch.Tensor, want: torch.Tensor, rtol: float, atol: float) -> float:
    err = (got - want).abs().max().item()
    if not torch.allclose(got, want, rtol=rtol, atol=atol):
        raise ExportCheckError(f"self-check failed: {what}: outputs differ by up to {err:.3g} "
                               f"(allowed rtol {rtol}, atol {atol})")
    return err


def _load_weights(path: Path, framework: nn.Module) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if path.suffix != ".safetensors":
        raise OpmixError(f"--weights {path}: give a .safetensors file (safetensors.torch.save_file("
                         f"model.state_dict(), PATH)); pickled checkpoints are not read")
    try:
        state = load_file(str(path))
    except (OSError, SafetensorError) as exc:
        raise OpmixError(f"--weights {path}: cannot be read as safetensors ({exc})") from None
    own = framework.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    shapes = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        detail = "; ".join(x for x in [
            f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
            f"{len(unexpected)} unexpected (e.g. {unexpected[0]})" if unexpected else "",
            f"{len(shapes)} of another shape (e.g. {shapes[0]}: {tuple(state[shapes[0]].shape)} vs "
            f"{tuple(own[shapes[0]].shape)})" if shapes else ""] if x)
        raise OpmixError(f"--weights {path}: do not fit this trial's network: {detail}; give weights saved "
                         f"from nas.network.build(arch) of this trial (arch.yaml)")
    return state


ONNX_KWARGS = {"input_names": ["images"], "output_names": ["logits"], "dynamo": True, "external_data": False,
               "verbose": False}
ONNX_PACKAGES = ("onnx", "onnxruntime", "onnxscript")  # onnxscript: the dynamo exporter's dependency


def onnx_available() -> bool:
    """Whether the ONNX export can run here (``pip install opmix[export]``)."""
    try:
        for name in ONNX_PACKAGES:
            importlib.import_module(name)
    except ImportError:
        return False
    return True


def _onnx_export(model: nn.Module, example: torch.Tensor, path: Path, *, dynamic: bool) -> None:
    """One ``torch.onnx.export`` of ``model`` at ``example`` into ``path`` (a dynamic batch dimension or the
    example's), with the exporter's progress lines and warnings kept off the console."""
    import contextlib
    import io
    import logging
    import warnings

    quiet = logging.getLogger("torch.onnx")
    level = quiet.level
    quiet.setLevel(logging.ERROR)  # it lists the torchvision ops it skips, and its progress
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            if dynamic:
                batch = torch.export.Dim("batch", min=1, max=1024)  # the example's batch is 2: see _export_programs
                torch.onnx.export(model, (example,), str(path), dynamic_shapes=({0: batch},), **ONNX_KWARGS)
            else:
                torch.onnx.export(model, (example,), str(path), **ONNX_KWARGS)
    finally:
        quiet.setLevel(level)


def _onnx_export_any_batch(model: nn.Module, example: torch.Tensor, path: Path) -> bool:
    """Export with a dynamic batch dimension, else at the example's batch; True when the batch is dynamic.
    Raises the fixed-batch try's exception when both fail."""
    try:
        _onnx_export(model, example, path, dynamic=True)
        return True
    except Exception:  # noqa: BLE001 (shape arithmetic that pins the batch: export at the example's)
        path.unlink(missing_ok=True)
        _onnx_export(model, example, path, dynamic=False)
        return False


def _onnx_run(path: Path, example: torch.Tensor) -> torch.Tensor:
    """``path``'s output at ``example`` in ONNX Runtime (CPU)."""
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {session.get_inputs()[0].name: example.numpy()})[0])


def _root_cause(exc: BaseException) -> str:
    """'ValueError: Cannot view a tensor ...': the innermost cause of ``exc`` (``raise ... from``), on one
    short line."""
    import re

    seen = set()
    while exc.__cause__ is not None and id(exc) not in seen:
        seen.add(id(exc))
        exc = exc.__cause__
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc)).strip()
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    first = first if len(first) <= 200 else first[:197] + "..."
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


def _failing_stages(deploy: nn.Module, example: torch.Tensor, stage_ops: list[str],
                    convert: Callable[[int, nn.Module, torch.Tensor], Any]) -> list[tuple[int, str]] | None:
    """(stage number from 1, operator) of each stage of ``deploy`` (``stages.<i>``) that ``convert(i, stage,
    its input)`` fails on alone, at the input it gets from ``example``; None when the stages cannot be taken
    apart."""
    stages = getattr(deploy, "stages", None)
    if stages is None or len(stages) != len(stage_ops):
        return None
    inputs: dict[int, torch.Tensor] = {}
    hooks = [stage.register_forward_pre_hook(lambda _m, args, i=i: inputs.setdefault(i, args[0].detach()))
             for i, stage in enumerate(stages)]
    try:
        with torch.no_grad():
            deploy(example)
    finally:
        for hook in hooks:
            hook.remove()
    failing = []
    for i, (stage, op) in enumerate(zip(stages, stage_ops)):
        try:
            convert(i, stage, inputs[i])
        except Exception:  # noqa: BLE001 (each stage's failure is what this looks for)
            failing.append((i + 1, op))
    return failing


def _conversion_failure(what: str, flag: str, exc: BaseException, where: list[tuple[int, str]] | None,
                        stage_ops: list[str] | None, without: str) -> str:
    """The one line for a failed conversion: the stages (and operators) that fail alone, or else the network's
    operators; the cause; and the way out, ``flag`` (``without``: what the export then holds)."""
    if where:  # the stages that fail alone
        ops = list(dict.fromkeys(op for _, op in where))
        stages = " in " + ", ".join(f"stage {i} ({op})" for i, op in where)
    else:  # every stage converts alone (the stem, the head or the whole fails), or no stages to try
        ops = list(dict.fromkeys(stage_ops or []))
        stages = f" for the network of {', '.join(ops)}" if ops else ""
        if where == []:
            stages += ", though each stage converts alone"
    other = ", or pick a trial without " + " or ".join(ops) if where else ""
    return (f"the {what} of the deploy network failed{stages} ({_root_cause(exc)}); nothing was written. Export "
            f"again with {flag} to get {without}{other}")


def _export_pt2(deploy: nn.Module, example: torch.Tensor, want: torch.Tensor, folder: Path,
                log: Callable[[str], None], stage_ops: list[str] | None) -> dict[str, Any]:
    """``model.pt2``: ``torch.export`` at a dynamic batch, else at the example's; checked against ``want``."""
    report: dict[str, Any] = {}
    batch = torch.export.Dim("batch", min=1, max=1024)  # the example's batch is 2: a batch of 1 would pin it
    try:
        program = torch.export.export(deploy, (example,), dynamic_shapes=({0: batch},))
        report["pt2_dynamic_batch"] = True
    except Exception:  # noqa: BLE001 (shape arithmetic that pins the batch: export at the example's)
        try:
            program = torch.export.export(deploy, (example,))
        except Exception as exc:  # noqa: BLE001 (torch.export's errors are of many kinds)
            where = _failing_stages(deploy, example, stage_ops, lambda _i, stage, x: torch.export.export(
                stage, (x,))) if stage_ops else None
            raise Pt2ExportError(_conversion_failure(
                "torch.export", "--no-pt2", exc, where, stage_ops,
                "model.py, arch.yaml and deploy/model.onnx without deploy/model.pt2")) from exc
        report["pt2_dynamic_batch"] = False
    torch.export.save(program, folder / "model.pt2")
    loaded = torch.export.load(folder / "model.pt2").module()
    with torch.no_grad():
        report["pt2_err"] = _check_close("deploy/model.pt2 against the deploy-form model", loaded(example), want,
                                         1e-4, 1e-4)
    log(f"  deploy/model.pt2 (torch.export), max |diff| {report['pt2_err']:.2g}, "
        f"{'dynamic' if report['pt2_dynamic_batch'] else 'fixed'} batch")
    return report


def _export_programs(deploy: nn.Module, example: torch.Tensor, folder: Path, log: Callable[[str], None],
                     *, onnx: bool = True, pt2: bool = True, stage_ops: list[str] | None = None) -> dict[str, Any]:
    """``model.pt2`` (torch.export) unless not ``pt2``, and, when the packages are there and ``onnx``,
    ``model.onnx``; each checked. A failed conversion raises ``Pt2ExportError`` or ``OnnxConversionError``
    naming the stages of ``stage_ops`` (the arch's operator per stage) that fail."""
    folder.mkdir()
    with torch.no_grad():
        want = deploy(example)
    report: dict[str, Any] = {}
    if pt2:
        report.update(_export_pt2(deploy, example, want, folder, log, stage_ops))
    else:
        report["pt2_skipped"] = "--no-pt2"
        log("  deploy/model.pt2 skipped (--no-pt2)")
    if not onnx:
        report["onnx_skipped"] = "--no-onnx"
        log("  deploy/model.onnx skipped (--no-onnx)")
        return report
    if not onnx_available():
        report["onnx_skipped"] = "packages"
        log("  deploy/model.onnx skipped: pip install 'opmix[export]' (onnx, onnxscript, onnxruntime) for it")
        return report
    path = folder / "model.onnx"
    try:
        report["onnx_dynamic_batch"] = _onnx_export_any_batch(deploy, example, path)
        got = _onnx_run(path, example)
    except Exception as exc:  # the exporter's and ONNX Runtime's errors are of many kinds
        where = None
        if stage_ops:
            scratch = folder / "onnx-stages"
            scratch.mkdir(exist_ok=True)

            def convert(i: int, stage: nn.Module, x: torch.Tensor) -> None:
                _onnx_export_any_batch(stage, x, scratch / f"stage{i}.onnx")
                _onnx_run(scratch / f"stage{i}.onnx", x)

            where = _failing_stages(deploy, example, stage_ops, convert)
            shutil.rmtree(scratch, ignore_errors=True)
        pt2_text = " and deploy/model.pt2" if pt2 else ""
        raise OnnxConversionError(_conversion_failure(
            "ONNX conversion", "--no-onnx", exc, where, stage_ops,
            f"model.py, arch.yaml{pt2_text} without deploy/model.onnx")) from exc
    try:
        report["onnx_err"] = _check_close("deploy/model.onnx (ONNX Runtime) against the deploy-form model", got,
                                          want, 1e-4, 1e-4)
    except ExportCheckError as exc:
        raise ExportCheckError(f"{exc} (--no-onnx exports without the ONNX file)") from None
    log(f"  deploy/model.onnx (ONNX Runtime), max |diff| {report['onnx_err']:.2g}"
        f"{', dynamic batch' if report['onnx_dynamic_batch'] else ', fixed batch'}")
    return report


def _refuse_existing(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise OpmixError(f"{out} exists; pass --force to replace it, or --out DIR for another folder")


def export(run_path: Path, record: dict[str, Any], out: Path, *, weights: Path | None = None, force: bool = False,
           onnx: bool = True, pt2: bool = True, log: Callable[[str], None] = print,
           latency_targets: tuple = ()) -> dict[str, Any]:
    """Export ``record``'s network into ``out`` (see the module docstring); returns the figures. With
    ``onnx=False`` there is no ``deploy/model.onnx``; a failed ONNX conversion raises ``OnnxConversionError``
    and writes nothing. Each of ``latency_targets`` (``nas.latency.Target``) times the deploy program
    (``model.onnx`` itself on ``ort-cpu``), and the figures go into the README and ``model.py``'s header."""
    from ._codegen import standalone_source
    from .flops import count_flops, count_params
    from .network import build

    _refuse_existing(out, force)
    arch = Arch.from_dict(record["arch"], source=f"trial {record['trial_id']}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(INIT_SEED)  # without --weights, the export holds this reproducible initialization
        framework = build(arch).eval()
    state = _load_weights(weights, framework) if weights is not None else None
    if state is not None:
        framework.load_state_dict(state)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        shape = (1, arch.in_chans, arch.input_size, arch.input_size)
        train_flops = count_flops(framework, shape, deploy=False)
        params = count_params(framework)
        source = standalone_source(arch, _header(arch, record, run_path, train_flops, params))
        (tmp / "model.py").write_text(source, encoding="utf-8")
        dump_arch(arch, tmp / "arch.yaml")
        module = _import_file(tmp / "model.py")
        standalone, report = _self_check(module, framework, record, arch, have_weights=state is not None, log=log)
        standalone.load_state_dict(framework.state_dict())  # the checks may have used randomized BatchNorms
        if state is not None:
            from safetensors.torch import save_file

            save_file({k: v.contiguous() for k, v in standalone.state_dict().items()}, str(tmp / "model.safetensors"))
        deploy = module.reparameterize_model(standalone).eval()
        example = torch.randn((2, *shape[1:]), generator=torch.Generator().manual_seed(1))
        report.update(_export_programs(deploy, example, tmp / "deploy", log, onnx=onnx, pt2=pt2,
                                       stage_ops=[s.op for s in arch.stages]))
        report.update(train_flops=train_flops, params=params, deploy_flops=record["flops"],
                      lines=len(source.splitlines()))
        report["latency"] = _measure_latency(deploy, arch, tmp / "deploy", report, latency_targets, log)
        if report["latency"]:  # the header states them too; only its docstring changes, which the checks ignore
            source = standalone_source(arch, _header(arch, record, run_path, train_flops, params, report["latency"]))
            (tmp / "model.py").write_text(source, encoding="utf-8")
        (tmp / "README.md").write_text(_readme(arch, record, run_path, report, state is not None), encoding="utf-8")
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            out.replace(old)
            tmp.replace(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.replace(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def _self_check(module: ModuleType, framework: nn.Module, record: dict[str, Any], arch: Arch, *,
                have_weights: bool, log: Callable[[str], None]) -> tuple[nn.Module, dict[str, Any]]:
    """The checks on ``model.py``'s network; returns that network (eval mode) and the figures."""
    from .flops import count_flops

    reference = copy.deepcopy(framework)
    if not have_weights:
        _randomize_bn(reference)
    standalone = module.build(arch.num_classes, arch.in_chans).eval()
    own, theirs = set(standalone.state_dict()), set(reference.state_dict())
    if own != theirs:
        raise ExportCheckError(f"self-check failed: state_dict keys differ from nas.network.build's: "
                               f"{sorted(own ^ theirs)[:3]}")
    standalone.load_state_dict(reference.state_dict())
    x = torch.randn(2, arch.in_chans, arch.input_size, arch.input_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        want = reference(x)
        got = standalone(x)
        err_fw = _check_close("model.py against nas.network.build with the same weights", got, want, 1e-5, 1e-6)
        deploy = module.reparameterize_model(standalone)
        err_rep = _check_close("model.py's deploy form against its training form", deploy(x), got, 1e-4, 1e-5)
    flops = count_flops(standalone, (1, arch.in_chans, arch.input_size, arch.input_size))
    if flops != record["flops"]:
        raise ExportCheckError(f"self-check failed: model.py's deploy form has {flops} FLOPs, the search recorded "
                               f"{record['flops']} for trial {record['trial_id']}")
    n_modules = sum(1 for _ in standalone.modules()), sum(1 for _ in deploy.modules())
    log(f"  model.py = nas.network.build (max |diff| {err_fw:.2g}); deploy form = training form (max |diff| "
        f"{err_rep:.2g}, {n_modules[0]} -> {n_modules[1]} modules); deploy FLOPs {flops / 1e9:.3f} G as recorded")
    return standalone, {"framework_err": err_fw, "reparam_err": err_rep, "modules": n_modules}


def _readme(arch: Arch, record: dict[str, Any], run_path: Path, report: dict[str, Any], weights: bool) -> str:
    size = f"{arch.in_chans}x{arch.input_size}x{arch.input_size}"
    onnx = ("- `deploy/model.onnx`: the same for ONNX Runtime"
            + (", batch dimension dynamic" if report.get("onnx_dynamic_batch") else ", fixed batch of 2")
            + f" (checked: max |diff| {report['onnx_err']:.2g}).\n") if "onnx_err" in report else (
            "- no ONNX file: exported with `--no-onnx`.\n" if report.get("onnx_skipped") == "--no-onnx" else
            "- no ONNX file: install `opmix[export]` (onnx, onnxscript, onnxruntime) and export again.\n")
    pt2 = (f"- `deploy/model.pt2`: the re-parameterized network at {size}, a `torch.export` program with a "
           f"{'dynamic batch dimension' if report['pt2_dynamic_batch'] else 'fixed batch of 2'} (checked against "
           f"the deploy form: max |diff| {report['pt2_err']:.2g}).\n") if "pt2_err" in report else (
           "- no `torch.export` program: exported with `--no-pt2`.\n")
    weights_text = ("- `model.safetensors`: the trained weights given with `--weights` (training form); the "
                    "deploy programs carry them.\n") if weights else (
                    "- no weights: the deploy programs hold the initialization of `torch.manual_seed(0); build()`; "
                    "train the network, or export again with `--weights FILE.safetensors`.\n")
    stages = arch_line(arch.to_dict()).replace("|", "\\|")
    load_pt2 = ('program = torch.export.load("deploy/model.pt2").module()   # or the ready deploy program\n'
                if "pt2_err" in report else "")
    return f"""# {_title(record)} of {run_path.name}

| | |
|---|---|
| stages (op xdepth width) | {stages} |
| stem, head | {arch.stem.type} {arch.stem.width}, {arch.head.type} |
| input | {size}, {arch.num_classes} classes |
| FLOPs, deploy form | {record['flops'] / 1e9:.3f} G multiply-adds |
| FLOPs, training form | {report['train_flops'] / 1e9:.3f} G multiply-adds |
| parameters (training form) | {report['params'] / 1e6:.2f} M |
| accuracy in the search | {_accuracy_text(record)} (proxy: reduced width, few epochs) |
{_latency_rows(report.get("latency") or [])}
## Files
- `model.py`: the network, standalone (torch and the standard library only).
- `arch.yaml`: the architecture (`nas.arch.load_arch` reads it).
{pt2}{onnx}{weights_text}
## Use
```python
import torch
from model import build, reparameterize_model

model = build(num_classes=1000, in_chans=3)   # training form: train it with your own loop
# model.load_state_dict(safetensors.torch.load_file("model.safetensors"))   # or weights of nas.network.build(arch)
deployed = reparameterize_model(model.eval())  # deploy form, same outputs, {report['modules'][0]} -> \
{report['modules'][1]} modules
{load_pt2}```
State-dict keys are those of opmix's `nas.network.build(arch)`, so weights move both ways. Re-parameterize
only after training, in eval mode: it folds BatchNorm statistics.
"""


def _latency_rows(latency: list[dict[str, Any]]) -> str:
    return "".join(f"| latency on {t['target']} | {t['ms']:.2f} ms (median {t['median_ms']:.2f}, IQR "
                   f"{t['iqr_ms']:.2f}, {t['runs']} runs; {t['device']}) |\n" for t in latency)


def _parser() -> _cli.Parser:
    p = _cli.Parser(prog=PROG, description="Export a search run's recommended trial (or --trial) as a standalone, "
                    "re-parameterizable network: model.py, arch.yaml, README.md and deploy programs.")
    p.add_argument("run", help="the run folder, e.g. runs/NAME")
    p.add_argument("--trial", default=None, help="the trial id (or reference name) to export (default: the "
                   "recommended pick: the best mean confirmed accuracy within the budget, or without confirmations "
                   "the most accurate completed trial)")
    p.add_argument("--out", default=None, help="output folder (default: RUN/export)")
    p.add_argument("--weights", default=None, help="trained weights (.safetensors, keys of nas.network.build) "
                   "to put into the exported network")
    p.add_argument("--force", action="store_true", help="replace the output folder if it exists")
    p.add_argument("--no-onnx", dest="onnx", action="store_false", help="do not write deploy/model.onnx (it is "
                   "written when onnx, onnxscript and onnxruntime are installed). Without this flag a network that "
                   "does not convert to ONNX stops the export: one line naming its operators, exit code 2, nothing "
                   "written; export again with --no-onnx then")
    p.add_argument("--no-pt2", dest="pt2", action="store_false", help="do not write deploy/model.pt2 (the "
                   "torch.export program). Without this flag a network that torch.export cannot trace stops the "
                   "export the same way; export again with --no-pt2 then")
    p.add_argument("--no-latency", dest="latency", action="store_false", help="do not time the deploy program "
                   "(by default it is timed on the run's latency target and on ort-cpu)")
    plugins.add_import_flag(p)
    return p


def _latency_targets(config: dict[str, Any], onnx: bool) -> tuple:
    """The run's latency target (if it has one), then ``ort-cpu`` (when the ONNX program is written)."""
    from .latency import Target

    targets = []
    lat = config.get("latency")
    if lat:
        run_target = Target(lat["target"], int(lat.get("threads", 1)), int(lat.get("batch", 1)),
                            lat.get("dtype") or "float32")
        run_target.check()
        targets.append(run_target)
    if onnx and onnx_available() and Target("ort-cpu") not in targets:
        targets.append(Target("ort-cpu"))
    return tuple(targets)


def _main(argv: list[str] | None) -> int:
    from .pareto import objectives_of

    args = _parser().parse_args(argv)
    run, config, records = load_run(args.run)
    plugins.import_modules([*config.get("imports", []), *args.imports])  # the run's plug-in operators, and more
    record = pick_trial(records, config["budget"], args.trial, *objectives_of(config))
    targets = _latency_targets(config, args.onnx) if args.latency else ()
    out = Path(args.out) if args.out else run.path / "export"
    weights = Path(args.weights) if args.weights else None
    if weights is not None and not weights.is_file():
        raise OpmixError(f"--weights {weights}: no such file")
    _refuse_existing(out, args.force)  # before the long part starts
    _cli.writable_dir(out.parent, "--out")
    print(f"exporting {_title(record).lower()} ({arch_line(record['arch'])}), {_accuracy_text(record)}, "
          f"{record['flops'] / 1e9:.3f} GFLOPs")
    try:
        export(run.path, record, out, weights=weights, force=args.force, onnx=args.onnx, pt2=args.pt2,
               latency_targets=targets)
    except ExportCheckError as exc:
        print(f"{PROG}: error: {exc}; nothing was written. Please report it with the run's arch.", file=sys.stderr)
        return 1
    print(f"wrote {out}: model.py, arch.yaml, README.md, deploy/")
    return 0


def main(argv: list[str] | None = None) -> None:
    _cli.run(PROG, _main, argv)


if __name__ == "__main__":
    main()
