"""Issue 7 on digits: distillation (with and without labels), --init fit, selective compression
with a frozen rest, and agreement with the original model in compress and evaluate."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch.utils.data import TensorDataset

import qtrain
from qtrain.cli import main
from qtrain.config import CompressConfig, DistillConfig, InitConfig, QTConfig, from_dict, to_dict
from qtrain.data import has_labels, inputs_of, load_data
from qtrain.distill import DistillLoss, agreement, infer_task, with_teacher
from qtrain.init_fit import fit_to_weights, relative_l2
from qtrain.models import digits_cnn

QUICK = ["--epochs", "2", "--blocks", "2", "--quiet"]


@pytest.fixture(scope="module")
def teacher(tmp_path_factory):
    """digits_cnn trained classically for 15 epochs (about 97% on the test split), saved as a
    state_dict, and an .npy of every digits image without labels."""
    from qtrain.baseline import train_classical

    folder = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(0)
    net = digits_cnn()
    train, test = load_data("digits", seed=0)
    result = train_classical(net, train, test, 15, 64, 1e-2, 0)
    assert result["test_accuracy"] > 0.9
    torch.save(net.state_dict(), folder / "teacher.pt")
    x = torch.cat([train.tensors[0], test.tensors[0]]).numpy()
    np.save(folder / "inputs.npy", x)
    return {"pt": folder / "teacher.pt", "npy": folder / "inputs.npy", "net": net,
            "accuracy": result["test_accuracy"]}


def _cli(capsys, *args) -> tuple[int, str, str]:
    rc = main([str(a) for a in args])
    cap = capsys.readouterr()
    return rc, cap.out, cap.err


def test_distill_loss_is_temperature_scaled_kl_mixed_with_labels():
    torch.manual_seed(0)
    s, t = torch.randn(6, 5), torch.randn(6, 5)
    y = torch.randint(0, 5, (6,))
    T = 3.0
    manual_kl = (F.softmax(t / T, -1) * (F.log_softmax(t / T, -1) - F.log_softmax(s / T, -1))
                 ).sum(-1).mean() * T**2
    ce = F.cross_entropy(s, y)
    for alpha in (0.0, 0.3, 1.0):
        loss = DistillLoss(DistillConfig(alpha=alpha, temperature=T), "classification")(s, y, t)
        torch.testing.assert_close(loss, alpha * manual_kl + (1 - alpha) * ce)
    # a student equal to its teacher has no teacher term
    assert float(DistillLoss(DistillConfig(alpha=1.0), "classification")(t, y, t)) < 1e-6
    # regression: MSE to the teacher's outputs and to the targets
    yr, tr, sr = torch.randn(6, 1), torch.randn(6, 1), torch.randn(6, 1)
    loss = DistillLoss(DistillConfig(alpha=0.25), "regression")(sr, yr, tr)
    torch.testing.assert_close(loss, 0.25 * F.mse_loss(sr, tr) + 0.75 * F.mse_loss(sr, yr))


def test_agreement_top1_and_kl():
    t = torch.tensor([[3.0, 0.0], [0.0, 3.0], [2.0, 1.0], [1.0, 2.0]])
    s = torch.tensor([[2.0, 0.0], [0.0, 1.0], [0.0, 1.0], [1.0, 2.0]])
    a = agreement(s, t, "classification")
    assert a["top1"] == pytest.approx(0.75)
    kl = (F.softmax(t, -1) * (F.log_softmax(t, -1) - F.log_softmax(s, -1))).sum(-1).mean()
    assert a["kl"] == pytest.approx(float(kl))
    assert agreement(t, t, "classification") == {"top1": 1.0, "kl": pytest.approx(0.0, abs=1e-7)}
    assert agreement(torch.ones(4, 1), torch.zeros(4, 1), "regression") == {"mse": 1.0}


def test_teacher_labels_data_without_labels():
    x = torch.randn(5, 3)
    ds = TensorDataset(x)
    assert not has_labels(ds) and has_labels(TensorDataset(x, torch.zeros(5)))
    torch.testing.assert_close(inputs_of(ds, 1, 3), x[1:3])
    logits = torch.randn(5, 4)
    assert infer_task(logits, "auto") == "classification"
    assert infer_task(torch.randn(5, 1), "auto") == "regression"
    assert infer_task(logits, "regression") == "regression"
    labelled = with_teacher(ds, logits, "classification")
    assert torch.equal(labelled.tensors[1], logits.argmax(-1))
    assert torch.equal(labelled.tensors[2], logits)
    # given labels are kept, the teacher's outputs ride along
    y = torch.arange(5)
    assert torch.equal(with_teacher(TensorDataset(x, y), logits, "classification").tensors[1], y)


def test_inputs_only_data_files_load(tmp_path):
    x = np.random.default_rng(0).random((20, 1, 8, 8), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    np.savez(tmp_path / "x.npz", x=x)
    for name in ("x.npy", "x.npz"):
        train, test = load_data(str(tmp_path / name), seed=0)
        assert len(train) == 16 and len(test) == 4 and not has_labels(train)


def test_distill_without_labels_end_to_end(teacher, tmp_path, cli_subprocess):
    """The real CLI: inputs only (.npy) + --distill; the teacher labels the data."""
    out = tmp_path / "kd"
    proc = cli_subprocess("compress", teacher["pt"], "--arch", "digits_cnn", "--distill",
                          "--data", teacher["npy"], "--epochs", "12", "--quiet", "--json",
                          "--out", out)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout.strip().splitlines()[-1])
    rec = json.loads((out / "qtrain.json").read_text())
    assert rec["data"]["labels"] == "teacher" and rec["data"]["task"] == "classification"
    assert rec["config"]["_data"]["distill"]["_data"]["enabled"] is True
    agree = rec["metrics"]["agreement"]
    # with teacher labels, test accuracy is agreement with the teacher; far above chance (10%)
    assert agree["top1"] == pytest.approx(rec["metrics"]["test_accuracy"], abs=1e-6)
    assert agree["top1"] > 0.5 and agree["kl"] > 0
    assert summary["agreement"]["top1"] == pytest.approx(agree["top1"])
    assert "agreement with MODEL: top-1" in proc.stderr  # --json prints the lines on stderr
    # evaluate relabels the inputs with the recorded MODEL and agrees with compress
    ev = cli_subprocess("evaluate", out, "--json")
    assert ev.returncode == 0, ev.stderr
    report = json.loads(ev.stdout)
    assert report["data"]["labels"] == "teacher"
    assert report["agreement"]["top1"] == pytest.approx(agree["top1"], abs=1e-6)
    assert report["agreement"]["kl"] == pytest.approx(agree["kl"], rel=1e-4)


def test_no_labels_without_distill_is_one_line_error(teacher, tmp_path, capsys, check_error):
    rc, _, err = _cli(capsys, "compress", teacher["pt"], "--arch", "digits_cnn", "--data",
                      teacher["npy"], *QUICK, "--out", tmp_path / "x")
    check_error(rc, err, "no labels", "--distill")
    assert not (tmp_path / "x" / "qtrain.json").exists()


@pytest.mark.parametrize("flags", [["--distill"], ["--init", "fit"]])
def test_distill_and_init_fit_need_trained_weights(flags, tmp_path, capsys, check_error):
    rc, _, err = _cli(capsys, "compress", "digits_cnn", *flags, *QUICK, "--out", tmp_path / "x")
    check_error(rc, err, flags[0], "trained MODEL", "--arch")


@pytest.mark.parametrize("flags, needle", [
    (["--distill-alpha", "1.5"], "--distill-alpha"),
    (["--temperature", "0"], "--temperature"),
    (["--init", "warm"], "--init"),
    (["--fit-steps", "0"], "--fit-steps"),
    (["--task", "ranking"], "--task"),
])
def test_bad_distill_options(flags, needle, tmp_path, capsys, check_error):
    rc, _, err = _cli(capsys, "compress", *flags, *QUICK, "--out", tmp_path / "x")
    check_error(rc, err, needle)


def test_distill_with_labels_records_agreement(teacher, tmp_path, capsys):
    out = tmp_path / "kd"
    rc, text, err = _cli(capsys, "compress", teacher["pt"], "--arch", "digits_cnn", "--distill",
                         "--distill-alpha", "0.7", "--temperature", "3", *QUICK, "--out", out)
    assert rc == 0, err
    rec = json.loads((out / "qtrain.json").read_text())
    d = rec["config"]["_data"]["distill"]["_data"]
    assert (d["alpha"], d["temperature"]) == (0.7, 3.0)
    assert "distillation   from MODEL's outputs: alpha 0.7, temperature 3.0" in _cli(capsys, "info", out)[1]
    assert rec["data"]["labels"] == "data"
    assert rec["metrics"]["original"]["test_accuracy"] == pytest.approx(teacher["accuracy"])
    assert 0 <= rec["metrics"]["agreement"]["top1"] <= 1
    ev = json.loads(_cli(capsys, "evaluate", out, "--json")[1])
    assert ev["agreement"]["top1"] == pytest.approx(rec["metrics"]["agreement"]["top1"])
    assert ev["original"]["test_accuracy"] == pytest.approx(teacher["accuracy"])


def test_evaluate_agreement_needs_an_original(digits_run, teacher, tmp_path, capsys):
    """A fresh-architecture run has no original; --original names one; a changed file is
    not silently compared."""
    rc, text, _ = _cli(capsys, "evaluate", digits_run.out)
    assert rc == 0 and "agreement: - (MODEL was a fresh architecture" in text
    ev = json.loads(_cli(capsys, "evaluate", digits_run.out, "--original", teacher["pt"],
                         "--json")[1])
    assert 0 <= ev["agreement"]["top1"] <= 1 and ev["agreement"]["original"] == str(teacher["pt"])
    # a checkpoint whose MODEL file changed afterwards
    pt = tmp_path / "t.pt"
    pt.write_bytes(teacher["pt"].read_bytes())
    out = tmp_path / "run"
    assert _cli(capsys, "compress", pt, "--arch", "digits_cnn", *QUICK, "--out", out)[0] == 0
    torch.save(digits_cnn().state_dict(), pt)
    rc, text, _ = _cli(capsys, "evaluate", out)
    assert rc == 0 and "has changed since compress" in text


def test_init_fit_reports_fit_error_and_starting_accuracy(teacher, tmp_path, capsys):
    out = tmp_path / "fit"
    rc, text, err = _cli(capsys, "compress", teacher["pt"], "--arch", "digits_cnn", "--init", "fit",
                         "--fit-steps", "60", *QUICK, "--out", out)
    assert rc == 0, err
    rec = json.loads((out / "qtrain.json").read_text())
    fit = rec["metrics"]["init_fit"]
    names = [m["name"] for m in rec["manifest"]]
    assert sorted(fit["relative_l2"]) == sorted(names)
    assert all(v >= 0 for v in fit["relative_l2"].values())
    assert fit["steps"] == 60 and fit["relative_l2_overall"] < fit["relative_l2_before"]
    assert 0 <= fit["test_accuracy"] <= 1 and 0 <= fit["before"]["test_accuracy"] <= 1
    assert "init fit (60 steps" in text and "before task training" in text
    assert json.loads((out / "init_fit.json").read_text()) == fit
    info = _cli(capsys, "info", out)[1]
    assert "init           init fit (60 steps" in info
    # resuming a finished fit does not fit again: the report is read back unchanged
    stamp = (out / "init_fit.json").stat().st_mtime_ns
    rc, text, err = _cli(capsys, "compress", teacher["pt"], "--arch", "digits_cnn", "--init", "fit",
                         "--fit-steps", "60", *QUICK[:1], "3", *QUICK[2:], "--resume",
                         "--out", out)
    assert rc == 0, err
    assert (out / "init_fit.json").stat().st_mtime_ns == stamp
    assert json.loads((out / "qtrain.json").read_text())["metrics"]["init_fit"] == fit


def test_fit_to_weights_matches_weights_it_can_represent():
    """A target that another generator of the same shape made is fitted far better than the
    random start; the per-tensor gain and shift are left where the wrapper set them."""
    torch.manual_seed(1)
    net = digits_cnn()
    maker = qtrain.QuantumTrain(net, QTConfig(blocks=2))
    with torch.no_grad():
        reference = {k: v.clone() for k, v in maker.generate().items()}
    torch.manual_seed(2)
    qt = qtrain.QuantumTrain(maker.materialize(reference), QTConfig(blocks=2))
    gain, shift = qt.generator.gain.detach().clone(), qt.generator.shift.detach().clone()
    report = fit_to_weights(qt, reference, steps=300, lr=0.02)
    assert report["relative_l2_overall"] < 0.5 * report["relative_l2_before"]
    assert torch.equal(qt.generator.gain, gain) and torch.equal(qt.generator.shift, shift)
    per = relative_l2(qt.generate(), reference)
    assert per == pytest.approx(report["relative_l2"], rel=1e-5)


def test_include_with_frozen_rest(teacher, tmp_path, capsys):
    """Only the classifier head is generated; the convolutions keep the teacher's weights
    exactly, are stored but not trained, and the checkpoint loads and regenerates."""
    out = tmp_path / "head"
    rc, text, err = _cli(capsys, "compress", teacher["pt"], "--arch", "digits_cnn", "--include",
                         "7.*", "--freeze-rest", *QUICK, "--out", out)
    assert rc == 0, err
    rec = json.loads((out / "qtrain.json").read_text())
    c = rec["counts"]
    assert c["generated"] == 650 and c["frozen"] == 1898 - 650 and c["classical"] == 0
    assert c["trainable_params"] == c["angles"] + c["mapping"] + c["scaling"]
    assert c["compression_ratio"] == pytest.approx(1898 / (c["trainable_params"] + c["frozen"]))
    assert "frozen 1,248 (not trained)" in text
    model = load_file(str(out / "model.safetensors"))
    original = teacher["net"].state_dict()
    for name in ("0.weight", "0.bias", "3.weight", "3.bias"):
        assert torch.equal(model[name], original[name])
    assert not torch.equal(model["7.weight"], original["7.weight"])
    stored = load_file(str(out / "compressed.safetensors"))
    assert {k for k in stored if k.startswith("frozen.")} == {
        "frozen.0/weight", "frozen.0/bias", "frozen.3/weight", "frozen.3/bias"}
    regenerated = qtrain.regenerate(out)
    for name, value in model.items():
        torch.testing.assert_close(regenerated[name], value)
    ev = json.loads(_cli(capsys, "evaluate", out, "--json")[1])
    assert ev["file_counts"]["agree"] and ev["file_counts"]["frozen"] == 1248


def test_include_with_trainable_rest(teacher, tmp_path, capsys):
    out = tmp_path / "head"
    rc, _, err = _cli(capsys, "compress", teacher["pt"], "--arch", "digits_cnn", "--include",
                      "7.*", *QUICK, "--out", out)
    assert rc == 0, err
    c = json.loads((out / "qtrain.json").read_text())["counts"]
    assert c["classical"] == 1248 and c["frozen"] == 0
    assert c["trainable_params"] == c["angles"] + c["mapping"] + c["scaling"] + 1248
    model = load_file(str(out / "model.safetensors"))
    assert not torch.equal(model["0.weight"], teacher["net"].state_dict()["0.weight"])


def test_configs_round_trip_and_old_records_load():
    cfg = CompressConfig(qt=QTConfig(freeze_rest=True), distill=DistillConfig(enabled=True, alpha=0.2),
                         init=InitConfig(init="fit", fit_steps=7))
    assert from_dict(to_dict(cfg)) == cfg
    old = to_dict(CompressConfig())
    del old["_data"]["distill"], old["_data"]["init"]
    del old["_data"]["qt"]["_data"]["freeze_rest"]
    assert from_dict(old) == CompressConfig()


def test_api_module_is_the_teacher_when_distilling(teacher):
    """A plain nn.Module given to qtrain.compress with distillation is the teacher."""
    from qtrain import TrainConfig

    net = digits_cnn()
    net.load_state_dict(teacher["net"].state_dict())
    cfg = CompressConfig(QTConfig(blocks=2), TrainConfig(epochs=1, quiet=True),
                         DistillConfig(enabled=True))
    result = qtrain.compress(net, "digits", cfg)
    assert result.metrics["original"]["test_accuracy"] == pytest.approx(teacher["accuracy"])
    assert 0 <= result.metrics["agreement"]["top1"] <= 1


def test_regression_model_distils_by_mse_without_labels(tmp_path, capsys):
    """A one-output model on inputs alone: auto task is regression, the teacher's outputs are
    the targets, agreement is the output MSE."""
    from qtrain.models import mlp

    rng = np.random.default_rng(0)
    x = rng.random((200, 64), dtype=np.float32)
    torch.manual_seed(0)
    net = mlp(hidden=8, num_classes=1)
    teacher_pt = tmp_path / "reg.pt"
    torch.save(net.state_dict(), teacher_pt)
    np.savez(tmp_path / "x.npz", x=x)
    out = tmp_path / "run"
    rc, _, err = _cli(capsys, "compress", teacher_pt, "--arch", "mlp", "--arch-kwargs",
                      '{"hidden": 8, "num_classes": 1}', "--distill", "--data", tmp_path / "x.npz",
                      *QUICK, "--out", out)
    assert rc == 0, err
    rec = json.loads((out / "qtrain.json").read_text())
    assert rec["data"]["task"] == "regression" and rec["data"]["labels"] == "teacher"
    assert rec["metrics"]["test_accuracy"] is None
    assert rec["metrics"]["agreement"]["mse"] == pytest.approx(rec["metrics"]["test_loss"], rel=1e-4)


BN_NET = '''\
from torch import nn


def bn_net():
    return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(),
                         nn.Linear(16, 10))
'''


def test_batchnorm_teacher_is_scored_with_its_own_statistics(tmp_path, capsys):
    """Nothing before training (the shape probe included) moves MODEL's BatchNorm statistics:
    the recorded original score is the trained model's own."""
    from qtrain.baseline import score, train_classical

    (tmp_path / "bn.py").write_text(BN_NET)
    import importlib.util

    spec = importlib.util.spec_from_file_location("bn_for_test", tmp_path / "bn.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    torch.manual_seed(0)
    net = module.bn_net()
    train, test = load_data("digits", seed=0)
    train_classical(net, train, test, 5, 64, 1e-2, 0)
    torch.save(net.state_dict(), tmp_path / "bn.pt")
    expected = score(net, test, "classification")
    rc, _, err = _cli(capsys, "compress", tmp_path / "bn.pt", "--arch", f"{tmp_path / 'bn.py'}:bn_net",
                      "--distill", *QUICK, "--out", tmp_path / "run")
    assert rc == 0, err
    original = json.loads((tmp_path / "run" / "qtrain.json").read_text())["metrics"]["original"]
    assert original["test_loss"] == pytest.approx(expected["loss"], rel=1e-6)
    assert original["test_accuracy"] == pytest.approx(expected["accuracy"])
