"""`qtrain sweep` on digits, for real: tables, skips on rerun, an interrupted sweep, settings
checks, --config, and the one-line message without matplotlib."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import textwrap

import pytest

from qtrain.cli import main

TINY = ["--epochs", "1", "--batch-size", "128", "--quiet"]


def cli(capsys, *args) -> tuple[int, str, str]:
    """Run the real CLI entry in-process; return (exit code, stdout, stderr)."""
    capsys.readouterr()
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def rows(folder) -> list[dict]:
    with open(folder / "sweep.csv") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory):
    """A finished two-combination sweep (ry, 11 qubits, L = 1, 2) with a 1-epoch baseline."""
    out = tmp_path_factory.mktemp("sweep") / "s"
    rc = main(["sweep", "--blocks", "1,2", "--mapping-hidden", "8", *TINY, "--out", str(out)])
    assert rc == 0
    return out


def test_sweep_writes_tables_and_plot(finished_sweep):
    """Each combination gets its own finished checkpoint; sweep.csv, sweep.md and pareto.png are
    written; compress options (--mapping-hidden) reach every combination."""
    got = rows(finished_sweep)
    assert [r["run"] for r in got] == ["classical", "ry-q11-L1", "ry-q11-L2"]
    for r in got[1:]:
        rec = json.loads((finished_sweep / r["run"] / "qtrain.json").read_text())
        assert rec["config"]["_data"]["qt"]["_data"]["mapping_hidden"] == [8]
        assert int(r["trainable_params"]) == rec["counts"]["trainable_params"]
        assert float(r["test_accuracy"]) == pytest.approx(rec["metrics"]["test_accuracy"])
        assert int(r["blocks"]) == rec["sizing"]["blocks"]
    assert int(got[0]["trainable_params"]) == 1898 and float(got[0]["compression_ratio"]) == 1.0
    md = (finished_sweep / "sweep.md").read_text()
    assert "| ry-q11-L2 | ry 11q x 2; mapping 8 gelu; scaling tensor |" in md and "| classical |" in md
    assert (finished_sweep / "pareto.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (finished_sweep / "curves.png").is_file()
    assert not list(finished_sweep.glob(".partial-*"))


def test_sweep_rerun_skips_finished(tmp_path, capsys, finished_sweep):
    """Re-running skips finished combinations (files untouched) and trains only the new one."""
    out = tmp_path / "s"
    shutil.copytree(finished_sweep, out)
    before = (out / "ry-q11-L1" / "qtrain.json").read_text()
    rc, text, err = cli(capsys, "sweep", "--blocks", "1,2,3", "--mapping-hidden", "8", *TINY,
                        "--out", out)
    assert rc == 0, err
    assert text.count("finished earlier, skipped") == 3  # baseline, L=1, L=2
    assert "[3/3] ry-q11-L3:" in text and "skipped" not in text.splitlines()[3]
    assert (out / "ry-q11-L1" / "qtrain.json").read_text() == before
    assert [r["run"] for r in rows(out)][-1] == "ry-q11-L3"


def test_sweep_other_settings_refused(tmp_path, capsys, check_error, finished_sweep):
    """A rerun with other settings into the same folder is a one-line error naming --force."""
    out = tmp_path / "s"
    shutil.copytree(finished_sweep, out)
    rc, _, err = cli(capsys, "sweep", "--blocks", "1", "--mapping-hidden", "8", "--epochs", "2",
                     "--quiet", "--batch-size", "128", "--baseline-epochs", "1", "--out", out)
    check_error(rc, err, "ry-q11-L1", "epochs 2, not 1", "--force")


def test_sweep_interrupted_loses_only_the_combination_in_flight(tmp_path, capsys, monkeypatch):
    """Interrupted in its second combination, a sweep keeps the first whole, leaves no half
    folder in the tables, and a rerun resumes the second from its last finished epoch."""
    compress_mod = sys.modules["qtrain.compress"]
    real_fit = compress_mod.fit
    calls = {"n": 0}

    def fit(qt, train_ds, test_ds, cfg, out=None, resume=False, on_epoch=None, **kw):
        calls["n"] += 1

        def boom(row):
            if calls["n"] == 2 and row["epoch"] == 2:
                raise KeyboardInterrupt
        return real_fit(qt, train_ds, test_ds, cfg, out, resume, on_epoch=boom, **kw)

    monkeypatch.setattr(compress_mod, "fit", fit)
    out = tmp_path / "s"
    args = ["sweep", "--blocks", "1,2", "--epochs", "2", "--batch-size", "256", "--quiet",
            "--baseline-epochs", "0", "--out", out]
    rc, _, err = cli(capsys, *args)
    assert rc == 130, err
    assert (out / "ry-q11-L1" / "qtrain.json").is_file()
    assert not (out / "ry-q11-L2").exists() and (out / ".partial-ry-q11-L2").is_dir()
    assert [r["run"] for r in rows(out)] == ["ry-q11-L1"]
    monkeypatch.setattr(compress_mod, "fit", real_fit)
    rc, text, err = cli(capsys, *args)
    assert rc == 0, err
    assert "ry-q11-L1: finished earlier, skipped" in text and "ry-q11-L2:" in text
    assert "resumed" in text
    epochs = [json.loads(line)["epoch"] for line in
              (out / "ry-q11-L2" / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2]
    assert [r["run"] for r in rows(out)] == ["ry-q11-L1", "ry-q11-L2"]
    assert not (out / ".partial-ry-q11-L2").exists()


def test_sweep_config_file_and_lists(tmp_path, capsys):
    """--config sets sweep options too (a TOML list of blocks; --qubits and --ansatz lists);
    two qubit values that resolve to the same circuit run once."""
    cfg = tmp_path / "s.toml"
    cfg.write_text('blocks = [1]\nepochs = 1\nbatch_size = 256\nquiet = true\nbaseline_epochs = 0\n'
                   'ansatz = "ry,u3"\nqubits = "auto,11"\n')
    rc, text, err = cli(capsys, "sweep", "--config", cfg, "--out", tmp_path / "s")
    assert rc == 0, err
    assert [r["run"] for r in rows(tmp_path / "s")] == ["ry-q11-L1", "u3-q11-L1"]
    assert "[2/2]" in text and "[3/" not in text


BLOCK_MATPLOTLIB = textwrap.dedent("""
    import importlib.abc, sys

    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "matplotlib" or name.startswith("matplotlib."):
                raise ImportError("matplotlib is blocked in this test")
            return None

    sys.meta_path.insert(0, Block())
    from qtrain.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_sweep_without_matplotlib(tmp_path, finished_sweep):
    """Without matplotlib the sweep says so in one line and still writes both tables."""
    out = tmp_path / "s"
    shutil.copytree(finished_sweep, out)
    for name in ("pareto.png", "curves.png", "sweep.csv", "sweep.md"):
        (out / name).unlink()
    proc = subprocess.run([sys.executable, "-c", BLOCK_MATPLOTLIB, "sweep", "--blocks", "1,2",
                           "--mapping-hidden", "8", *TINY, "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    notes = [line for line in proc.stdout.splitlines() if line.startswith("matplotlib")]
    assert len(notes) == 1 and "pip install 'qtrain[plot]'" in notes[0]
    assert (out / "sweep.csv").is_file() and (out / "sweep.md").is_file()
    assert not (out / "pareto.png").exists()
    assert len(rows(out)) == 3
    assert "matplotlib" not in proc.stderr
