"""CSV/TensorBoard logging, progress bar, plots and throughput (salt_fast.metrics)."""

import csv
import sys
import warnings

import pytest
import torch

from salt_fast import metrics
from salt_fast.metrics import LogWindow, MetricsLogger, ProgressBar, peak_memory_mb, plot_metrics


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def test_csv_rows_flushed_mid_run(tmp_path):
    logger = MetricsLogger(tmp_path, tensorboard=False)
    logger.log(1, loss=torch.tensor(0.5), lr=1e-4)
    rows = read_csv(tmp_path / "metrics.csv")  # read back while the logger is open
    assert rows == [{"step": "1", "loss": "0.5", "lr": "0.0001"}]
    logger.log(2, loss=0.25)  # missing key: empty cell
    assert read_csv(tmp_path / "metrics.csv")[1] == {"step": "2", "loss": "0.25", "lr": ""}
    logger.log(3, loss=0.125, grad_norm=2.0)  # new key: header widened, old rows kept
    rows = read_csv(tmp_path / "metrics.csv")
    assert list(rows[0]) == ["step", "loss", "lr", "grad_norm"]
    assert [r["loss"] for r in rows] == ["0.5", "0.25", "0.125"]
    assert [r["grad_norm"] for r in rows] == ["", "", "2.0"]
    logger.log(4, loss=0.0625)  # appending still works after the rewrite
    logger.close()
    assert len(read_csv(tmp_path / "metrics.csv")) == 4
    assert not (tmp_path / "metrics.csv.tmp").exists()

    # Resume: appends under the existing header.
    with MetricsLogger(tmp_path, tensorboard=False) as again:
        again.log(5, loss=0.03125, grad_norm=1.0)
    rows = read_csv(tmp_path / "metrics.csv")
    assert [r["step"] for r in rows] == ["1", "2", "3", "4", "5"]
    assert rows[-1] == {"step": "5", "loss": "0.03125", "lr": "", "grad_norm": "1.0"}


def test_fixed_columns(tmp_path):
    logger = MetricsLogger(tmp_path, tensorboard=False, columns=["loss", "lr"])
    assert (tmp_path / "metrics.csv").read_text().strip() == "step,loss,lr"
    logger.log(7, lr=3e-4)
    logger.close()
    assert read_csv(tmp_path / "metrics.csv") == [{"step": "7", "loss": "", "lr": "0.0003"}]


def test_rank_nonzero_writes_nothing(tmp_path):
    out = tmp_path / "run"
    logger = MetricsLogger(out, rank=1)
    logger.log(1, loss=1.0)
    logger.close()
    assert not out.exists()


def test_tensorboard_events(tmp_path):
    pytest.importorskip("tensorboard")
    with MetricsLogger(tmp_path) as logger:
        logger.log(1, loss=1.0)
    assert list((tmp_path / "tb").glob("events.out.tfevents.*"))


def test_tensorboard_missing_degrades(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)
    monkeypatch.setattr(metrics, "_warned", set())
    with pytest.warns(RuntimeWarning, match="tensorboard"):
        logger = MetricsLogger(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        MetricsLogger(tmp_path / "second").close()  # warned once only
    logger.log(1, loss=1.0)
    logger.close()
    assert read_csv(tmp_path / "metrics.csv") == [{"step": "1", "loss": "1.0"}]
    assert not (tmp_path / "tb").exists()


def test_plot_metrics(tmp_path):
    pytest.importorskip("matplotlib")
    with MetricsLogger(tmp_path, tensorboard=False) as logger:
        for step in range(1, 21):
            logger.log(step, loss=1.0 / step, lr=1e-4 * step)
    png = plot_metrics(tmp_path / "metrics.csv", tmp_path / "plots" / "loss.png", keys=("loss", "lr", "absent"))
    assert png == tmp_path / "plots" / "loss.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.warns(RuntimeWarning):
        assert plot_metrics(tmp_path / "metrics.csv", tmp_path / "none.png", keys=("absent",)) is None


def test_plot_metrics_without_matplotlib(tmp_path, monkeypatch):
    (tmp_path / "m.csv").write_text("step,loss\n1,0.5\n")
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)
    monkeypatch.setitem(sys.modules, "matplotlib.backends.backend_agg", None)
    monkeypatch.setattr(metrics, "_warned", set())
    with pytest.warns(RuntimeWarning, match="matplotlib"):
        assert plot_metrics(tmp_path / "m.csv", tmp_path / "m.png") is None
    assert not (tmp_path / "m.png").exists()


class FakeClock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_progress_bar_without_tqdm(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    monkeypatch.setattr(metrics, "_warned", set())
    clock = FakeClock()
    with pytest.warns(RuntimeWarning, match="tqdm"):
        bar = ProgressBar(total=100, initial=20, print_every=10.0, clock=clock)
    clock.t += 5.0
    bar.update(10, loss=torch.tensor(0.123456))  # 5 s since start: not printed yet
    assert capsys.readouterr().out == ""
    clock.t += 5.0
    bar.update(10, loss=0.1)  # 20 steps in 10 s: 2 step/s, 60 left -> 30 s
    out = capsys.readouterr().out
    assert out.strip() == "train 40/100 (40%) | loss 0.1 | 2.00 step/s | ETA 0m30s"
    clock.t += 30.0
    bar.update(60)  # last step always printed
    assert "100/100 (100%)" in capsys.readouterr().out
    bar.close()


def test_progress_bar_tqdm_and_disabled(capsys):
    pytest.importorskip("tqdm")
    import io

    buf = io.StringIO()
    with ProgressBar(total=5, file=buf) as bar:
        for _ in range(5):
            bar.update(loss=0.5)
    assert "5/5" in buf.getvalue()
    off = ProgressBar(total=5, enabled=False)
    off.update(5, loss=1.0)
    off.close()
    assert off.n == 5
    assert capsys.readouterr() == ("", "")


def test_log_window_math():
    clock = FakeClock()
    window = LogWindow(clock=clock)
    for clips in (8, 16):
        with window.waiting():
            clock.t += 0.25
        clock.t += 1.75
        window.add(clips, flops=int(2e12))
    assert window.rates(peak_flops=4e12) == pytest.approx(
        {"clips_per_s": 24 / 4, "tflops_per_gpu": 1.0, "mfu": 0.25, "data_wait_s": 0.5}
    )
    assert window.rates()["mfu"] == 0.0  # no known peak (a CPU)
    window.reset()
    clock.t += 1.0
    window.add(4, 0)
    assert window.rates() == pytest.approx({"clips_per_s": 4.0, "tflops_per_gpu": 0.0, "mfu": 0.0, "data_wait_s": 0.0})


def test_peak_memory_cpu():
    assert peak_memory_mb("cpu") is None
    assert peak_memory_mb(torch.device("cpu")) is None
    if not torch.cuda.is_available():
        assert peak_memory_mb("cuda") is None
