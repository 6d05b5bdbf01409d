"""Interrupted commands: Ctrl-C gives one line and exit 130, killed runs resume to the result of an uninterrupted
one, files are written atomically with ordinary permissions, and a refused command claims no folder.

The kill-and-resume tests run the real command in a child process that kills itself when it writes its k-th
record (journal line group, or training checkpoint): before the write, half-way through it (a line cut short,
or a checkpoint file half replaced) or after it. The points come from a seeded generator, so every machine
kills at the same places, and the verdict does not depend on how fast the machine is.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import torch
from PIL import Image
from tests._journals import journal_lines, without

import odam
from odam.cli import main
from odam.data.synthcrowd import generate
from odam.evaluation import journal
from odam.evaluation.explanations import METHODS
from odam.evaluation.nms import NmsConfig

#: Runs ``odam`` with ``sys.argv[1:]``; ``ODAM_TEST_KILL`` = ``{"at": k, "phase": ..., "signal": ...}`` sends
#: the signal to itself at the k-th record it writes. Ctrl-C is restored to Python's default, in case the test
#: runner's parent ignores it.
_LAUNCHER = r"""
import contextlib, json, os, signal, sys
signal.signal(signal.SIGINT, signal.default_int_handler)
plan = json.loads(os.environ.get("ODAM_TEST_KILL", "null"))
if plan is not None:
    from odam._atomic import atomic_path
    from odam.evaluation import journal
    from odam.train import engine

    calls = [0]

    def due():
        calls[0] += 1
        return calls[0] == plan["at"]

    def stop():
        os.kill(os.getpid(), getattr(signal, plan["signal"]))

    append = journal.append_rows

    def append_rows(path, rows):
        if not due():
            return append(path, rows)
        if plan["phase"] == "mid":  # the kernel had written half of the lines
            data = "".join(json.dumps(r) + "\n" for r in rows).encode("utf-8")
            with open(path, "ab") as f:
                f.write(data[: len(data) // 2])
        elif plan["phase"] == "after":
            append(path, rows)
        stop()

    journal.append_rows = append_rows  # every runner's journal writes through it
    save = engine._save

    def _save(out, *args):
        if not due():
            return save(out, *args)
        if plan["phase"] == "before":
            return stop()
        if plan["phase"] == "mid":  # killed while train_state.safetensors is written: it stays as it was
            @contextlib.contextmanager
            def killed_path(path):
                with atomic_path(path) as tmp:
                    yield tmp
                    stop()
            engine.atomic_path = killed_path
        if plan["phase"] == "torn":  # train_state.safetensors is replaced; killed inside the next file's write
            def atomic_write(path, data):
                with atomic_path(path) as tmp:
                    tmp.write_bytes(data.encode("utf-8"))
                    stop()
            engine.atomic_write = atomic_write
        save(out, *args)
        stop()

    engine._save = _save
from odam.cli import main
sys.exit(main(sys.argv[1:]))
"""

_ENV = os.environ | {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _start(args: list[str], log: Path, plan: dict | None = None, umask: int = -1) -> subprocess.Popen:
    env = _ENV | ({"ODAM_TEST_KILL": json.dumps(plan)} if plan else {})
    with open(log, "w") as f:  # the child keeps its own copy of the descriptor
        return subprocess.Popen([sys.executable, "-c", _LAUNCHER, *args], stdout=subprocess.DEVNULL, stderr=f,
                                env=env, umask=umask)


@pytest.fixture(scope="module")
def crowd(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 SynthCrowd crowd scenes of 160x160, held out from the bundled models' training (seed 5)."""
    root = tmp_path_factory.mktemp("resume") / "data"
    generate(root, 8, seed=5, size=160, progress=False)
    return root


# --------------------------------------------------------------------------------------- atomic writes


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_atomic_write_respects_the_umask_and_leaves_no_temporary_file(tmp_path: Path, umask: int) -> None:
    from odam._atomic import atomic_path, atomic_write

    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "a.json", "{}\n")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a.json").stat().st_mode) == 0o666 & ~umask
    with pytest.raises(KeyboardInterrupt), atomic_path(tmp_path / "a.json") as tmp:
        tmp.write_text("half")
        raise KeyboardInterrupt
    assert (tmp_path / "a.json").read_text() == "{}\n"  # the old content, whole
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_an_interrupted_journal_append_leaves_whole_lines(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "images.jsonl"
    journal.append_row(path, {"image_id": 1})
    real = os.write

    def interrupted(fd: int, data: bytes) -> int:  # Ctrl-C after part of the record reached the file
        real(fd, bytes(data[:7]))
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "write", interrupted)
    with pytest.raises(KeyboardInterrupt):
        journal.append_rows(path, [{"image_id": 2, "x": "y" * 100}, {"image_id": 3}])
    monkeypatch.undo()
    assert path.read_text() == '{"image_id": 1}\n'
    journal.append_row(path, {"image_id": 4})
    assert list(journal.image_rows(path)) == [1, 4]


def _replaced(monkeypatch: pytest.MonkeyPatch) -> set[Path]:
    """The targets of every ``os.replace`` from now on: the files written atomically."""
    targets: set[Path] = set()
    real = os.replace

    def replace(src: str | os.PathLike, dst: str | os.PathLike) -> None:
        targets.add(Path(dst).resolve())
        real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    return targets


@pytest.mark.parametrize("command", [
    ["evaluate", "nms", "--model", "synthcrowd-fcos", "--methods", "nms,odam-nms", "--max-images", "1",
     "--max-candidates", "20", "--sweep"],
    ["evaluate", "correlation", "--model", "synthcrowd-fcos", "--max-images", "1", "--score-threshold", "0.5"],
])
def test_runners_write_every_file_but_their_journal_atomically(crowd: Path, tmp_path: Path, command: list[str],
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    atomic = _replaced(monkeypatch)
    assert main([*command, "--data", str(crowd), "--out", str(tmp_path), "--device", "cpu"]) == 0
    files = {p.resolve() for p in (tmp_path / "synthcrowd-fcos").iterdir()}
    assert {p.name for p in files} >= {"config.json", "images.jsonl", "summary.json"}
    assert files - atomic == {(tmp_path / "synthcrowd-fcos" / "images.jsonl").resolve()}


# ----------------------------------------------------------------------------- validate, then claim


def test_nms_refuses_a_bad_setting_without_claiming_the_folder(crowd: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture) -> None:
    command = ["evaluate", "nms", "--data", str(crowd), "--model", "synthcrowd-fcos", "--methods", "nms,odam-nms",
               "--max-images", "1", "--max-candidates", "20", "--out", str(tmp_path), "--device", "cpu"]
    assert main([*command, "--short-edge", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "short_edge must be a positive int, got 0" in err
    assert not (tmp_path / "synthcrowd-fcos" / "config.json").exists()
    assert main([*command, "--short-edge", "40"]) == 0  # the corrected command, into the same folder
    assert json.loads((tmp_path / "synthcrowd-fcos" / "config.json").read_text())["short_edge"] == 40


@pytest.mark.parametrize("runner", ["nms", "correlation", "explanations"])
def test_a_run_that_failed_before_its_first_record_does_not_block_the_corrected_command(
        crowd: Path, tmp_path: Path, runner: str, capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "empty"  # a folder without a dataset: refused after the settings, before any image
    empty.mkdir()
    extra = {"nms": ["--methods", "nms", "--max-images", "1", "--max-candidates", "20"],
             "correlation": ["--max-images", "1", "--score-threshold", "0.5"],
             "explanations": ["--methods", "odam", "--max-objects", "1", "--steps", "4", "--eval-every", "2",
                              "--sanity-objects", "0"]}[runner]
    out = tmp_path / "out"
    command = ["evaluate", runner, "--model", "synthcrowd-fcos", *extra, "--out", str(out), "--device", "cpu"]
    assert main([*command, "--data", str(empty)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not out.exists() or not list(out.rglob("config.json"))
    assert main([*command, "--data", str(crowd)]) == 0


def test_a_claim_without_records_may_be_replaced_one_with_records_may_not(tmp_path: Path) -> None:
    settings = {"data": "d", "short_edge": 50}
    records = tmp_path / "images.jsonl"
    journal.check_settings(tmp_path, settings, {}, [records])
    journal.check_settings(tmp_path, settings | {"short_edge": 40}, {}, [records])  # no record yet: replaced
    assert json.loads((tmp_path / "config.json").read_text())["short_edge"] == 40
    journal.append_row(records, {"image_id": 1})
    with pytest.raises(ValueError, match="holds a run with short_edge=40, not 30"):
        journal.check_settings(tmp_path, settings | {"short_edge": 30}, {}, [records])


def test_nms_config_checks_every_method_setting() -> None:
    with pytest.raises(ValueError, match="short_edge must be a positive int, got 0"):
        NmsConfig(data="", model="", methods=("nms",), short_edge=0).check()


# --------------------------------------------------------------------------------------------- Ctrl-C


def test_ctrl_c_during_explain_is_one_line_exit_130_and_leaves_whole_files(tmp_path: Path) -> None:
    generate(tmp_path / "data", 16, seed=9, size=128, progress=False)
    images = sorted(str(p) for p in (tmp_path / "data" / "images").iterdir())
    out = tmp_path / "out"
    proc = _start(["explain", *images, "--score-threshold", "0.3", "--max-detections", "2", "--save-maps",
                   "--out", str(out)], tmp_path / "err.log", umask=0o027)
    report = out / "explanations.json"
    try:
        while not (out / "index.html").exists():  # started work: the first image is written (the page last)
            assert proc.poll() is None, (tmp_path / "err.log").read_text()
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 130
    finally:
        proc.kill()
    assert (tmp_path / "err.log").read_text() == "odam: interrupted\n"
    done = json.loads(report.read_text())
    assert 1 <= len(done["images"]) < len(images) and done["errors"] == []
    panels = {d["panel"] for entry in done["images"] for d in entry["detections"]}
    names = {p.name for p in out.iterdir()}
    assert panels <= names and not [n for n in names if n.startswith(".") or ".tmp" in n]
    for path in out.iterdir():  # every file is whole, and an ordinary file (0o666 & ~umask)
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path.name
        if path.suffix == ".png":
            with Image.open(path) as im:
                im.load()
        elif path.suffix == ".npz":
            with np.load(path) as arrays:
                assert arrays["maps"].shape[0] == len(arrays["boxes"])
    assert (out / "index.html").read_text().endswith("\n")  # whole, though it may lag explanations.json by one image


# ------------------------------------------------------------------------------------ kill and resume


#: Where in the write of its record a run is killed: before it, half-way (a journal line cut short, or a
#: training state file half written), after it; for training also ``torn``: the state is written, the
#: checkpoint files are not.
_PHASES = ("before", "mid", "after")


def _interrupt_then_resume(args: list[str], out: Path, records: int, seed: int, log: Path,
                           signals: tuple[str, ...] = ("SIGKILL", "SIGKILL"), phases: tuple[str, ...] = _PHASES,
                           last: str | None = None, resume_flag: tuple[str, ...] = ()) -> dict | None:
    """Interrupt ``odam ARGS --out OUT`` with each of ``signals`` in turn, each time at a seeded record of those
    the whole run writes (``records``) and a seeded phase of its write, then run it to the end. ``last``: the
    last interruption is in this phase of the last record instead. ``resume_flag`` is added once there is a
    training state to resume. Returns ``OUT/train_state.json`` as the last interruption left it (or ``None``)."""
    rng = np.random.default_rng(seed)
    done = 0
    for n, sig in enumerate(signals):
        left, later = records - done, len(signals) - 1 - n
        assert left > later, "too few records for this many interruptions"
        at = int(rng.integers(1, left - later + 1))  # so that each later interruption finds a record left
        # Ctrl-C is handled by Python between two bytecodes: after the write (the writers themselves are atomic)
        phase = "after" if sig == "SIGINT" else phases[int(rng.integers(len(phases)))]
        if last is not None and later == 0:
            at, phase = left, last
        name = log.with_suffix(f".{n}.log")
        proc = _start([*args, *_flag(out, resume_flag), "--out", str(out)], name,
                      {"at": at, "phase": phase, "signal": sig})
        code, text = proc.wait(timeout=600), f"{sig} at record {done + at} ({phase}):\n" + name.read_text()
        if sig == "SIGINT":
            assert code == 130, text[-3000:]
            assert text.rstrip("\n").rsplit("\n", 1)[-1].endswith("odam: interrupted") and "Traceback" not in text
        else:
            assert code == -signal.SIGKILL, text[-3000:]
        done += at if phase in ("after", "torn") else at - 1
    state = json.loads((out / "train_state.json").read_text()) if (out / "train_state.json").exists() else None
    name = log.with_suffix(".resumed.log")
    proc = _start([*args, *_flag(out, resume_flag), "--out", str(out)], name)
    assert proc.wait(timeout=600) == 0, name.read_text()[-3000:]
    return state


def _flag(out: Path, resume_flag: tuple[str, ...]) -> tuple[str, ...]:
    return resume_flag if (out / "train_state.safetensors").exists() else ()




def test_evaluate_nms_resumes_to_the_uninterrupted_result(crowd: Path, tmp_path: Path) -> None:
    images = 5
    args = ["evaluate", "nms", "--data", str(crowd), "--model", "synthcrowd-fcos", "--methods",
            "nms,soft-nms,odam-nms", "--max-images", str(images), "--max-candidates", "40", "--sweep",
            "--device", "cpu"]
    whole = _start([*args, "--out", str(tmp_path / "whole")], tmp_path / "whole.log")
    _interrupt_then_resume(args, tmp_path / "killed", images, seed=11, log=tmp_path / "killed.log",
                           signals=("SIGINT", "SIGKILL", "SIGKILL"))
    assert whole.wait(timeout=600) == 0, (tmp_path / "whole.log").read_text()[-3000:]
    a, b = tmp_path / "whole" / "synthcrowd-fcos", tmp_path / "killed" / "synthcrowd-fcos"
    timing = ("seconds", "timed")  # the first image of each process is not timed
    rows = without(journal_lines(b / "images.jsonl"), timing)
    assert rows == without(journal_lines(a / "images.jsonl"), timing) and len(rows) == images
    assert without(json.loads((b / "summary.json").read_text()), timing) == \
        without(json.loads((a / "summary.json").read_text()), timing)
    assert (b / "sweep.csv").read_text() == (a / "sweep.csv").read_text()


def test_evaluate_correlation_resumes_to_the_uninterrupted_result(crowd: Path, tmp_path: Path) -> None:
    images = 3
    args = ["evaluate", "correlation", "--data", str(crowd), "--model", "synthcrowd-fcos", "--max-images",
            str(images), "--score-threshold", "0.6", "--device", "cpu"]
    whole = _start([*args, "--out", str(tmp_path / "whole")], tmp_path / "whole.log")
    _interrupt_then_resume(args, tmp_path / "killed", images, seed=12, log=tmp_path / "killed.log")
    assert whole.wait(timeout=600) == 0, (tmp_path / "whole.log").read_text()[-3000:]
    a, b = tmp_path / "whole" / "synthcrowd-fcos", tmp_path / "killed" / "synthcrowd-fcos"
    assert journal_lines(b / "images.jsonl") == journal_lines(a / "images.jsonl")
    for name in ("summary.json", "summary.md"):
        assert (b / name).read_text() == (a / name).read_text()


def test_evaluate_explanations_resumes_to_the_uninterrupted_result(crowd: Path, tmp_path: Path) -> None:
    args = ["evaluate", "explanations", "--data", str(crowd), "--model", "synthcrowd-fcos", "--methods",
            "odam,gradcam,drise", "--max-objects", "4", "--steps", "10", "--eval-every", "5", "--drise-masks", "8",
            "--drise-batch", "4", "--drise-objects", "2", "--sanity-objects", "1", "--device", "cpu"]
    whole = _start([*args, "--out", str(tmp_path / "whole")], tmp_path / "whole.log")
    assert whole.wait(timeout=600) == 0, (tmp_path / "whole.log").read_text()[-3000:]
    a, b = tmp_path / "whole", tmp_path / "killed"
    objects, sanity = journal_lines(a / "objects.jsonl"), journal_lines(a / "sanity.jsonl")
    assert {r["method"] for r in objects} == {"odam", "gradcam", "drise"} and sanity
    # one record write per (image, method) in each journal
    records = len({(r["image_id"], r["method"]) for r in objects}) + len({(r["image_id"], r["method"]) for r in sanity})
    _interrupt_then_resume(args, b, records, seed=13, log=tmp_path / "killed.log")
    for name in ("objects.jsonl", "sanity.jsonl"):
        got = journal_lines(b / name)
        assert len(got) == len({(r["image_id"], r["ann_id"], r["method"]) for r in got})  # none measured twice
        assert without(journal.object_records(b / name, METHODS), ("seconds",)) == \
            without(journal.object_records(a / name, METHODS), ("seconds",))
    first, second = (json.loads((p / "summary.json").read_text()) for p in (a, b))
    assert without(second, ("seconds_per_object",)) == without(first, ("seconds_per_object",))
    assert (b / "summary.md").read_text().count("| ODAM |") >= 1 and (b / "curves.png").stat().st_size > 0


def test_train_resumes_to_the_weights_of_an_uninterrupted_run(crowd: Path, tmp_path: Path) -> None:
    epochs = 5
    args = ["train", "--model", "fcos", "--data", str(crowd), "--val", str(crowd), "--batch-size", "2",
            "--max-iters", "2", "--min-size", "64", "--max-size", "64", "--warmup-iters", "1", "--epochs",
            str(epochs), "--seed", "3", "--device", "cpu"]
    whole = _start([*args, "--out", str(tmp_path / "whole")], tmp_path / "whole.log")
    # a checkpoint after each epoch, and one more with the final metrics; the last kill is during that one
    before = _interrupt_then_resume(args, tmp_path / "killed", epochs + 1, seed=14, log=tmp_path / "killed.log",
                                    signals=("SIGINT", "SIGKILL", "SIGKILL"), phases=(*_PHASES, "torn"),
                                    last="torn", resume_flag=("--resume",))
    assert whole.wait(timeout=600) == 0, (tmp_path / "whole.log").read_text()[-3000:]
    a, b = tmp_path / "whole", tmp_path / "killed"
    wa, wb = (safetensors.torch.load_file(str(p / "model.safetensors")) for p in (a, b))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    ca, cb = (json.loads((p / "config.json").read_text()) for p in (a, b))
    timing = ("seconds", "out")
    assert cb["epochs_done"] == epochs and without(cb, timing) == without(ca, timing)
    sa, sb = (json.loads((p / "train_state.json").read_text()) for p in (a, b))
    assert without(sb, timing) == without(sa, timing)
    # the epochs finished before the last kill were not trained again: their records, wall times included, stay
    assert before is not None and sb["history"][: len(before["history"])] == before["history"]
    detector = odam.load_detector(b)  # the checkpoint is a loadable detector
    assert detector.categories == ("__background__", "person") and type(detector.model).__name__ == "FCOS"
