"""The ``qtrain`` command line, run for real: every MODEL form, one-line errors, --resume,
--config, ``qtrain info`` and --include/--exclude."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import save_file

from qtrain.cli import main
from qtrain.data import load_digits_split
from qtrain.models import digits_cnn

SUMMARY_KEYS = {"target_params", "trainable_params", "compression_ratio", "qubits", "blocks",
                "chunk", "ansatz", "test_accuracy", "out"}
METRIC_KEYS = {"epoch", "train_loss", "test_loss", "test_accuracy", "lr", "seconds"}
BUFFERS = {"generator.ref"}  # persistent buffers in compressed.safetensors, not trained


def cli(capsys, *args: str) -> tuple[int, str, str]:
    """Run the real CLI entry in-process; return (exit code, stdout, stderr)."""
    capsys.readouterr()  # drop anything printed earlier (e.g. by a session fixture)
    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def summary(stdout: str) -> dict:
    """The --json summary: the last stdout line."""
    return json.loads(stdout.strip().splitlines()[-1])


def record(folder) -> dict:
    return json.loads((folder / "qtrain.json").read_text())


def digits_accuracy(model: torch.nn.Module) -> float:
    _, test = load_digits_split(seed=0)
    x, y = test.tensors
    with torch.no_grad():
        return float((model.eval()(x).argmax(-1) == y).float().mean())


@pytest.fixture(scope="module")
def trained_state() -> dict:
    """A digits_cnn state_dict briefly trained in plain torch, so its accuracy is far from
    chance and identifiable."""
    torch.manual_seed(0)
    model = digits_cnn()
    train, _ = load_digits_split(seed=0)
    x, y = train.tensors
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(40):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# ----------------------------------------------------------------------------- end to end


def test_end_to_end_writes_all_files(digits_run):
    """A default `qtrain compress` subprocess writes all four files, one metrics line per epoch."""
    out = digits_run.out
    for name in ("compressed.safetensors", "model.safetensors", "qtrain.json", "metrics.jsonl"):
        assert (out / name).is_file(), name
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert set(r) >= METRIC_KEYS
        assert 0.0 <= r["test_accuracy"] <= 1.0 and r["seconds"] > 0
    assert digits_run.record["arch"]["spec"] == "digits_cnn"
    assert digits_run.record["data"]["spec"] == "digits"


def test_end_to_end_json_summary(digits_run):
    """--json ends stdout with one JSON summary; its ratio is target_params / trainable_params."""
    s = summary(digits_run.stdout)
    assert set(s) >= SUMMARY_KEYS
    assert s["target_params"] == 1898  # digits_cnn, every parameter generated
    assert s["compression_ratio"] == pytest.approx(s["target_params"] / s["trainable_params"])
    assert (s["qubits"], s["blocks"], s["chunk"], s["ansatz"]) == (11, 2, 1, "ry")
    assert s["out"] == str(digits_run.out)
    assert s["test_accuracy"] == digits_run.record["metrics"]["test_accuracy"]
    assert s["trainable_params"] == digits_run.record["counts"]["trainable_params"]
    # the human summary went to stderr, not stdout
    assert "compression ratio" in digits_run.stderr
    assert len(digits_run.stdout.strip().splitlines()) == 1


def test_end_to_end_safetensors_metadata(digits_run):
    """Both safetensors files carry format/format_version in their header metadata."""
    for name in ("compressed.safetensors", "model.safetensors"):
        with safe_open(str(digits_run.out / name), "pt") as f:
            meta = f.metadata()
        assert meta["format"] == "qtrain", name
        assert meta["format_version"] == "1", name


def test_end_to_end_compressed_size_is_trainable_params(digits_run):
    """compressed.safetensors holds trainable_params numbers (less buffers); model, the target."""
    with safe_open(str(digits_run.out / "compressed.safetensors"), "pt") as f:
        sizes = {k: f.get_tensor(k).numel() for k in f.keys()}
    assert BUFFERS <= set(sizes)
    stored = sum(n for k, n in sizes.items() if k not in BUFFERS)
    assert stored == summary(digits_run.stdout)["trainable_params"]
    with safe_open(str(digits_run.out / "model.safetensors"), "pt") as f:
        full = sum(f.get_tensor(k).numel() for k in f.keys())
    assert full == summary(digits_run.stdout)["target_params"]


# ----------------------------------------------------------------------------- MODEL forms


def test_state_dict_pt_with_arch(tmp_path, capsys, fast_args, trained_state):
    """A state_dict .pt plus --arch digits_cnn trains, starting from the file's own weights."""
    path = tmp_path / "net.pt"
    torch.save(trained_state, path)
    rc, out, err = cli(capsys, "compress", path, "--arch", "digits_cnn", *fast_args,
                       "--out", tmp_path / "run")
    assert rc == 0, err
    rec = record(tmp_path / "run")
    assert rec["arch"] == {"spec": "digits_cnn", "kwargs": {}}
    assert rec["source"]["path"] == str(path.resolve())
    model = digits_cnn()
    model.load_state_dict(trained_state)
    expected = digits_accuracy(model)
    assert expected > 0.5  # far from chance, so the equality below identifies the weights
    assert rec["metrics"]["original"]["test_accuracy"] == pytest.approx(expected)


def test_state_dict_safetensors_with_arch(tmp_path, capsys, fast_args, trained_state):
    """A .safetensors state_dict plus --arch trains with the file's weights."""
    path = tmp_path / "net.safetensors"
    save_file(trained_state, str(path))
    rc, out, err = cli(capsys, "compress", path, "--arch", "digits_cnn", *fast_args,
                       "--out", tmp_path / "run", "--json")
    assert rc == 0, err
    assert summary(out)["target_params"] == 1898
    model = digits_cnn()
    model.load_state_dict(trained_state)
    rec = record(tmp_path / "run")
    assert rec["metrics"]["original"]["test_accuracy"] == pytest.approx(digits_accuracy(model))


def test_arch_file_spec_with_kwargs(tmp_path, capsys, fast_args, tiny_net_file):
    """--arch path/to/file.py:Name with --arch-kwargs builds that class with those kwargs."""
    rc, out, err = cli(capsys, "compress", "--arch", f"{tiny_net_file}:TinyNet", "--arch-kwargs",
                       '{"hidden": 8}', *fast_args, "--out", tmp_path / "run", "--json")
    assert rc == 0, err
    assert summary(out)["target_params"] == 64 * 8 + 8 + 8 * 10 + 10
    rec = record(tmp_path / "run")
    assert rec["arch"] == {"spec": f"{tiny_net_file}:TinyNet", "kwargs": {"hidden": 8}}
    assert [m["name"] for m in rec["manifest"]] == ["body.1.weight", "body.1.bias",
                                                    "body.3.weight", "body.3.bias"]


def test_relative_arch_file_is_recorded_absolute(tmp_path, capsys, fast_args, tiny_net_file,
                                                 monkeypatch):
    """A relative file.py:Name spec is stored absolute, so qtrain.load works from any folder."""
    import qtrain

    monkeypatch.chdir(tiny_net_file.parent)
    out = tmp_path / "run"
    rc, _, err = cli(capsys, "compress", *fast_args, "--arch", "tiny_net.py:TinyNet",
                     "--out", out)
    assert rc == 0, err
    assert record(out)["arch"]["spec"] == f"{tiny_net_file}:TinyNet"
    monkeypatch.chdir(tmp_path)
    model = qtrain.load(out, arch=f"{tiny_net_file}:TinyNet")
    assert isinstance(model, torch.nn.Module)


def test_arch_module_factory_with_kwargs(tmp_path, capsys, fast_args):
    """--arch package.module:factory (qtrain.models:mlp) with --arch-kwargs."""
    rc, out, err = cli(capsys, "compress", "--arch", "qtrain.models:mlp", "--arch-kwargs",
                       '{"hidden": 12}', *fast_args, "--out", tmp_path / "run", "--json")
    assert rc == 0, err
    assert summary(out)["target_params"] == 64 * 12 + 12 + 12 * 10 + 10
    assert record(tmp_path / "run")["arch"] == {"spec": "qtrain.models:mlp",
                                                "kwargs": {"hidden": 12}}


def test_builtin_name_alone(tmp_path, capsys, fast_args, monkeypatch):
    """`qtrain compress digits_cnn` (a built-in name, no file) trains that architecture."""
    monkeypatch.chdir(tmp_path)
    rc, out, err = cli(capsys, "compress", "digits_cnn", *fast_args, "--out", "run", "--json")
    assert rc == 0, err
    s = summary(out)
    assert s["target_params"] == 1898 and s["qubits"] == 11
    assert record(tmp_path / "run")["arch"]["spec"] == "digits_cnn"


def test_toolkit_cnn_on_fitting_npz(tmp_path, capsys, monkeypatch):
    """--arch toolkit_cnn alone trains on an .npz of 1x28x28 images (M = 6,690, 13 qubits)."""
    rng = np.random.default_rng(0)
    npz = tmp_path / "tiny28.npz"
    np.savez(npz, x_train=rng.random((48, 1, 28, 28), dtype=np.float32),
             y_train=rng.integers(0, 10, 48), x_test=rng.random((16, 1, 28, 28), dtype=np.float32),
             y_test=rng.integers(0, 10, 16))
    rc, out, err = cli(capsys, "compress", "--arch", "toolkit_cnn", "--data", npz, "--epochs", "1",
                       "--blocks", "1", "--quiet", "--out", tmp_path / "run", "--json")
    assert rc == 0, err
    s = summary(out)
    assert (s["target_params"], s["qubits"]) == (6690, 13)
    rec = record(tmp_path / "run")
    assert rec["data"]["input_shape"] == [1, 28, 28]
    assert (rec["data"]["train_size"], rec["data"]["test_size"]) == (48, 16)


def test_pickled_module_with_trust_pickle(tmp_path, capsys, fast_args):
    """A torch.save(model) whole-module pickle trains with --trust-pickle."""
    path = tmp_path / "whole.pt"
    torch.save(digits_cnn(), path)
    rc, out, err = cli(capsys, "compress", path, "--trust-pickle", *fast_args,
                       "--out", tmp_path / "run", "--json")
    assert rc == 0, err
    assert summary(out)["target_params"] == 1898
    assert record(tmp_path / "run")["arch"] == {"pickle": str(path.resolve())}


# ----------------------------------------------------------------------------- one-line errors


def test_error_missing_model_file(tmp_path, capsys, check_error):
    """A missing MODEL file is a one-line error naming the file."""
    rc, _, err = cli(capsys, "compress", tmp_path / "absent.pt", "--arch", "digits_cnn")
    check_error(rc, err, "absent.pt", "does not exist")


def test_error_state_dict_without_arch(tmp_path, capsys, check_error):
    """A state_dict without --arch is a one-line error that asks for --arch."""
    path = tmp_path / "sd.pt"
    torch.save(digits_cnn().state_dict(), path)
    rc, _, err = cli(capsys, "compress", path)
    check_error(rc, err, "state_dict", "--arch")


def test_error_pickle_without_trust(tmp_path, capsys, check_error):
    """A pickled whole module without --trust-pickle is refused, naming --trust-pickle."""
    path = tmp_path / "whole.pt"
    torch.save(digits_cnn(), path)
    rc, _, err = cli(capsys, "compress", path)
    check_error(rc, err, "pickled", "--trust-pickle")


def test_error_random_bytes_pt(tmp_path, capsys, check_error):
    """Random bytes named .pt are reported as corrupt (not as a pickle needing trust)."""
    path = tmp_path / "junk.pt"
    path.write_bytes(np.random.default_rng(0).bytes(2048))
    rc, _, err = cli(capsys, "compress", path, "--arch", "digits_cnn")
    line = check_error(rc, err, "junk.pt", "corrupt")
    assert "--trust-pickle" not in line


def test_error_truncated_pt(tmp_path, capsys, check_error):
    """A truncated state_dict .pt is a one-line 'corrupt or truncated' error."""
    full = tmp_path / "full.pt"
    torch.save(digits_cnn().state_dict(), full)
    cut = tmp_path / "cut.pt"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    rc, _, err = cli(capsys, "compress", cut, "--arch", "digits_cnn")
    check_error(rc, err, "cut.pt", "truncated")


def test_error_too_few_qubits(tmp_path, capsys, check_error):
    """--qubits 5 --chunk 1 cannot hold digits_cnn's 1,898 weights: the error names --qubits 11."""
    rc, _, err = cli(capsys, "compress", "--qubits", "5", "--chunk", "1", "--quiet",
                     "--out", tmp_path / "run")
    check_error(rc, err, "--qubits 11", "1,898")
    assert not (tmp_path / "run").exists()


def test_error_data_does_not_fit(tmp_path, capsys, check_error):
    """toolkit_cnn on 8x8 digits names the failing layer and the data shape (1, 8, 8)."""
    rc, _, err = cli(capsys, "compress", "--arch", "toolkit_cnn", "--quiet",
                     "--out", tmp_path / "run")
    check_error(rc, err, "(1, 8, 8)", "'3'", "Conv2d")


def test_error_state_dict_keys_mismatch(tmp_path, capsys, check_error):
    """A digits_cnn state_dict given --arch mlp is a one-line error naming the bad keys."""
    path = tmp_path / "sd.pt"
    torch.save(digits_cnn().state_dict(), path)
    rc, _, err = cli(capsys, "compress", path, "--arch", "mlp")
    check_error(rc, err, "does not match --arch mlp", "missing 1.bias")


def test_error_out_holds_a_run(tmp_path, capsys, check_error, digits_run):
    """--out that already holds a run is refused without --resume/--force, untouched."""
    out = tmp_path / "run"
    shutil.copytree(digits_run.out, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    rc, _, err = cli(capsys, "compress", "--epochs", "1", "--blocks", "2", "--quiet", "--out", out)
    check_error(rc, err, "already holds a run", "--resume", "--force")
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_error_unknown_ansatz(capsys, check_error):
    """An unknown --ansatz is a one-line error listing the choices."""
    rc, _, err = cli(capsys, "compress", "--ansatz", "rz", "--epochs", "1")
    check_error(rc, err, "--ansatz 'rz'", "ry, u3")


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_error_cuda_without_gpu(tmp_path, capsys, check_error):
    """--device cuda on a machine without CUDA is a one-line error suggesting --device cpu."""
    rc, _, err = cli(capsys, "compress", "--device", "cuda", "--epochs", "1", "--quiet",
                     "--out", tmp_path / "run")
    check_error(rc, err, "CUDA", "--device cpu")


def test_error_bad_arch_kwargs_json(capsys, check_error):
    """--arch-kwargs that is not JSON is a one-line error with an example."""
    rc, _, err = cli(capsys, "compress", "--arch", "mlp", "--arch-kwargs", "{hidden: 8}")
    check_error(rc, err, "--arch-kwargs is not valid JSON", "num_classes")


def test_error_subprocess_has_no_traceback(tmp_path, cli_subprocess, check_error):
    """Through the real console entry (a subprocess) an error is one stderr line, exit 2."""
    proc = cli_subprocess("compress", str(tmp_path / "absent.pt"))
    check_error(proc.returncode, proc.stderr, "absent.pt")
    assert proc.returncode == 2 and proc.stdout == ""


# ----------------------------------------------------------------------------- resume, config


def test_resume_continues_the_run(tmp_path, capsys):
    """--resume --epochs 3 after 2 epochs adds epoch 3 and keeps the first two metrics lines."""
    out = tmp_path / "run"
    base = ["compress", "--blocks", "2", "--quiet", "--out", out]
    rc, _, err = cli(capsys, *base, "--epochs", "2")
    assert rc == 0, err
    first = (out / "metrics.jsonl").read_text().splitlines()
    assert len(first) == 2
    rc, _, err = cli(capsys, *base, "--epochs", "3", "--resume")
    assert rc == 0, err
    lines = (out / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 3
    assert lines[:2] == first
    assert json.loads(lines[2])["epoch"] == 3
    assert record(out)["metrics"]["epochs"] == 3
    lrs = [json.loads(line)["lr"] for line in lines]
    assert lrs[2] < lrs[1], "the cosine decay is stretched over the new --epochs, not restarted"


def test_resume_with_other_settings(tmp_path, capsys, check_error):
    """--resume with another circuit size is a one-line error and leaves the run untouched."""
    out = tmp_path / "run"
    rc, _, err = cli(capsys, "compress", "--blocks", "2", "--epochs", "1", "--quiet", "--out", out)
    assert rc == 0, err
    before = (out / "metrics.jsonl").read_text()
    rc, _, err = cli(capsys, "compress", "--blocks", "3", "--epochs", "2", "--quiet", "--out", out,
                     "--resume")
    check_error(rc, err, "other settings", "--force")
    assert (out / "metrics.jsonl").read_text() == before


def test_config_file_sets_options_and_flags_override(tmp_path, capsys):
    """--config FILE.toml sets options (top level and in tables); command-line flags win."""
    cfg = tmp_path / "run.toml"
    cfg.write_text('epochs = 1\nblocks = 3\nquiet = true\n\n[train]\nlr = 0.005\nseed = 7\n')
    rc, out, err = cli(capsys, "compress", "--config", cfg, "--blocks", "2",
                       "--out", tmp_path / "run", "--json")
    assert rc == 0, err
    s = summary(out)
    assert s["blocks"] == 2  # the flag wins over blocks = 3
    conf = record(tmp_path / "run")["config"]["_data"]
    assert conf["qt"]["_data"]["blocks"] == 2
    train = conf["train"]["_data"]
    assert (train["epochs"], train["lr"], train["seed"], train["quiet"]) == (1, 0.005, 7, True)


def test_config_file_unknown_key(tmp_path, capsys, check_error):
    """An unknown key in --config is a one-line error naming it."""
    cfg = tmp_path / "bad.toml"
    cfg.write_text("epochz = 1\n")
    rc, _, err = cli(capsys, "compress", "--config", cfg)
    check_error(rc, err, "epochz")


# ----------------------------------------------------------------------------- info, patterns


def test_info_prints_architecture_and_sizing(capsys, digits_run):
    """`qtrain info DIR` prints the architecture, M, the circuit and the trainable count."""
    rc, out, err = cli(capsys, "info", digits_run.out)
    assert rc == 0, err
    rec = digits_run.record
    assert "digits_cnn" in out
    assert "1,898" in out
    assert "ry, 11 qubits x 2 blocks, chunk 1" in out
    assert f"{rec['counts']['trainable_params']:,}" in out


def test_info_json_and_missing_folder(tmp_path, capsys, check_error, digits_run):
    """`qtrain info --json` prints qtrain.json as it is; a folder without one is an error."""
    rc, out, _ = cli(capsys, "info", digits_run.out, "--json")
    assert rc == 0 and json.loads(out) == digits_run.record
    rc, _, err = cli(capsys, "info", tmp_path)
    check_error(rc, err, "qtrain.json")


def test_exclude_keeps_last_linear_classical(tmp_path, capsys, digits_run):
    """--exclude '7.*' keeps digits_cnn's last Linear classical and trainable."""
    base = summary(digits_run.stdout)
    rc, out, err = cli(capsys, "compress", "--exclude", "7.*", "--epochs", "2", "--blocks", "2",
                       "--quiet", "--out", tmp_path / "run", "--json")
    assert rc == 0, err
    s = summary(out)
    rec = record(tmp_path / "run")
    assert rec["classical"] == ["7.weight", "7.bias"]
    assert rec["counts"]["classical"] == 64 * 10 + 10
    assert rec["sizing"]["generated"] == 1898 - 650
    assert s["target_params"] == base["target_params"]
    # 7.weight + 7.bias (650) become trainable; their 2 x 2 gain/shift scaling parameters go
    assert s["trainable_params"] == base["trainable_params"] + 650 - 2 * 2
    with safe_open(str(tmp_path / "run" / "compressed.safetensors"), "pt") as f:
        assert f.get_tensor("classical.7/weight").shape == (10, 64)


def test_include_generates_only_matches(tmp_path, capsys):
    """--include '0.*,3.*' generates only the two conv layers; the rest stays classical."""
    rc, out, err = cli(capsys, "compress", "--include", "0.*,3.*", "--epochs", "1", "--blocks",
                       "2", "--quiet", "--out", tmp_path / "run", "--json")
    assert rc == 0, err
    rec = record(tmp_path / "run")
    assert [m["name"] for m in rec["manifest"]] == ["0.weight", "0.bias", "3.weight", "3.bias"]
    assert rec["sizing"]["generated"] == 80 + 1168
    assert rec["sizing"]["qubits"] == 11


@pytest.mark.parametrize("flag", ["--include", "--exclude"])
def test_pattern_matching_nothing(capsys, check_error, flag):
    """An --include/--exclude glob that matches no parameter is a one-line error."""
    rc, _, err = cli(capsys, "compress", flag, "nothing.*", "--epochs", "1")
    check_error(rc, err, flag, "matches no parameter")

