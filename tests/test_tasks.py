"""Every task trains a few steps with the loss going down; data loaders and their errors."""

import pickle

import numpy as np
import pytest
import torch

from specopt.tasks import TASKS, DataError, get_task, load_cifar10, load_mnist, read_text

FAST = {
    "char-gpt": {"size": "tiny"},
    "cnn": {"width": 8, "batch_size": 64},
    "mlp": {"width": 64},
    "logreg": {},
    "matrix-factorization": {"init_scale": 0.3},
    "icl-regression": {},
    "heavy-tailed": {},
}


@pytest.mark.parametrize("name", list(TASKS))
def test_every_task_trains_with_loss_going_down(name):
    task = get_task(name, seed=0, **FAST[name])
    model = task.build_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = task.validation_loss(model)
    for step in range(30):
        opt.zero_grad()
        task.loss(model, task.batch(step)).backward()
        opt.step()
    assert task.validation_loss(model) < before


@pytest.mark.parametrize("name", list(TASKS))
def test_seed_fixes_init_and_data_order(name):
    a, b, c = (get_task(name, seed=s, **FAST[name]) for s in (0, 0, 1))
    for pa, pb in zip(a.build_model().parameters(), b.build_model().parameters(), strict=True):
        assert torch.equal(pa, pb)
    ba, bb = a.batch(7), b.batch(7)
    if ba is not None:
        assert all(torch.equal(x, y) for x, y in zip(ba, bb, strict=True))
        assert not all(torch.equal(x, y) for x, y in zip(ba, a.batch(8), strict=True))
        assert not all(torch.equal(x, y) for x, y in zip(ba, c.batch(7), strict=True))


def test_char_gpt_on_a_user_text_file(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("the quick brown fox jumps over the lazy dog. " * 200)
    task = get_task("char-gpt", data=str(path), size="tiny")
    assert len(task.vocab) == len(set(path.read_text()))
    x, y = task.batch(0)
    assert torch.equal(x[:, 1:], y[:, :-1])  # targets are the next characters


def test_cifar10_loader_on_a_generated_batch(tmp_path):
    rng = np.random.default_rng(0)
    for name, n in [("data_batch_1", 20), ("data_batch_2", 10), ("test_batch", 8)]:
        with open(tmp_path / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8),
                         b"labels": rng.integers(0, 10, n).tolist()}, f)
    (x, y), (tx, ty) = load_cifar10(tmp_path)
    assert x.shape == (30, 3, 32, 32) and y.shape == (30,) and tx.shape == (8, 3, 32, 32)
    assert 0 <= float(x.min()) and float(x.max()) <= 1
    task = get_task("cnn", data=str(tmp_path), width=4, batch_size=8)
    model = task.build_model()
    assert model(task.batch(0)[0]).shape == (8, task.classes)


@pytest.mark.parametrize("test_data, match", [
    (np.zeros((0, 3072), dtype=np.uint8), "test_batch holds no images"),
    ([[300] * 3072] * 4, "pixel values 0–255 .* from 300 to 300"),
    (np.full((4, 3072), 0.5), "pixel values 0–255 .*float64")])
def test_a_cifar10_batch_without_images_or_with_other_pixel_values_is_named(tmp_path, test_data, match):
    """A test_batch of 0 images crashed in the task's max(); values above 255 were an OverflowError, not the file's
    name and the problem; floats were cast to uint8 silently."""
    rng = np.random.default_rng(0)
    with open(tmp_path / "data_batch_1", "wb") as f:
        pickle.dump({b"data": rng.integers(0, 256, (20, 3072), dtype=np.uint8), b"labels": [1, 2] * 10}, f)
    with open(tmp_path / "test_batch", "wb") as f:
        pickle.dump({b"data": test_data, b"labels": [3] * len(test_data)}, f)
    with pytest.raises(DataError, match=match):
        load_cifar10(tmp_path)


def test_shipped_data_loads():
    images, labels = load_mnist()
    assert images.shape == (5000, 1, 28, 28) and set(labels.tolist()) == set(range(10))
    assert "Hamlet" in read_text() or "HAMLET" in read_text()


@pytest.mark.parametrize(
    "call, match",
    [(lambda p: read_text(p / "missing.txt"), "not found.*missing.txt"),
     (lambda p: load_mnist(p / "nope.csv"), "not found.*nope.csv"),
     (lambda p: load_cifar10(p / "absent"), "directory not found"),
     (lambda p: load_cifar10(p), "no data_batch"),
     (lambda p: get_task("char-gpt", data=str(p / "gone.txt")), "gone.txt")],
)
def test_missing_data_names_the_path(tmp_path, call, match):
    with pytest.raises(DataError, match=match):
        call(tmp_path)


def test_malformed_files_are_reported(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("1,2,3\n4,5,6\n")
    with pytest.raises(DataError, match="785 columns"):
        load_mnist(bad)
    (tmp_path / "data_batch_1").write_bytes(b"not a pickle")
    (tmp_path / "test_batch").write_bytes(b"not a pickle")
    with pytest.raises(DataError, match="cannot read CIFAR-10 batch"):
        load_cifar10(tmp_path)
    short = tmp_path / "short.txt"
    short.write_text("too short")
    with pytest.raises(DataError, match="at least 1000"):
        read_text(short)


def test_unknown_task_and_option_list_the_valid_ones():
    with pytest.raises(ValueError, match="unknown task 'gpt5'.*valid tasks: char-gpt"):
        get_task("gpt5")
    with pytest.raises(ValueError, match="no option.*depth"):
        get_task("mlp", depth=3)
    with pytest.raises(ValueError, match="unknown char-gpt size"):
        get_task("char-gpt", size="huge")


def test_icl_regression_gradient_matches_autograd():
    task = get_task("icl-regression", d=6, kappa=10.0)
    G = torch.randn(6, 6, dtype=torch.float64, requires_grad=True)
    task.objective(G).backward()
    torch.testing.assert_close(G.grad, task.gradient(G.detach()))
    assert task.objective(task.Gamma_star) <= task.objective(G.detach())


def test_char_gpt_head_dim_fixes_the_head_and_adds_heads_with_width():
    for width in (16, 64):
        model = get_task("char-gpt", size="tiny", n_embd=width, head_dim=16).build_model()
        assert model.blocks[0].attn.n_head == width // 16
    with pytest.raises(ValueError, match="head_dim must be a positive integer dividing n_embd = 48"):
        get_task("char-gpt", size="tiny", n_embd=48, head_dim=32)
    with pytest.raises(ValueError, match="unknown char-gpt init 'xavier'"):
        get_task("char-gpt", size="tiny", init="xavier")


@pytest.mark.parametrize("width", [16, 128])
def test_char_gpt_norms_init_puts_every_matrix_on_its_unit_sphere(width):
    from specopt import param_groups

    model = get_task("char-gpt", size="tiny", n_embd=width, head_dim=16, init="norms").build_model()
    for group in param_groups(model, scheme="text"):
        for name, p in group["params"]:
            # the unit sphere of each matrix's norm; LayerNorm gains keep their ones (RMS 1 too)
            assert float(group["norm"].norm(p.detach()).max()) == pytest.approx(1.0, rel=1e-5), name
    attn = model.blocks[0].attn.c_attn.weight.detach()  # each fused q/k/v block: √(d_out/d_in)·orthogonal
    q = attn[:width]
    torch.testing.assert_close(q @ q.T, torch.eye(width), atol=1e-5, rtol=0)


def test_char_gpt_standard_init_is_pytorchs_fan_in_init():
    model = get_task("char-gpt", size="tiny", n_embd=64, init="standard").build_model()
    fc = model.blocks[0].fc.weight.detach()  # U(±1/√fan_in): std 1/√(3·fan_in)
    assert float(fc.abs().max()) <= 1 / 64**0.5
    assert float(fc.std()) == pytest.approx(1 / (3 * 64) ** 0.5, rel=0.05)
    assert float(model.wte.weight.detach().std()) == pytest.approx(1.0, rel=0.1)  # embeddings N(0, 1)


def test_a_label_first_mnist_csv_is_read_by_its_label_with_or_without_a_header(tmp_path):
    """Kaggle's layout (``label, pixel0 … pixel783``, often with a header) trained on the last pixel, a constant 0,
    as the label: loss 0.0000, exit 0. The label is found (the end column with more than one digit, or the header's
    ``label``); a file with one class left is refused."""
    import gzip

    from specopt.tasks.data import shipped

    rows = np.loadtxt(gzip.open(shipped("mnist_5k.csv.gz"), "rt"), delimiter=",", dtype=np.int64)
    pick = np.random.default_rng(0).permutation(len(rows))[:200]
    images, labels = load_mnist()
    first = np.concatenate([rows[pick, 784:], rows[pick, :784]], axis=1)
    np.savetxt(tmp_path / "plain.csv", first, fmt="%d", delimiter=",")
    with open(tmp_path / "header.csv", "w") as f:
        f.write("label," + ",".join(f"pixel{i}" for i in range(784)) + "\n")
        np.savetxt(f, first, fmt="%d", delimiter=",")
    for name in ("plain.csv", "header.csv"):
        x, y = load_mnist(tmp_path / name)
        assert torch.equal(y, labels[pick]) and torch.equal(x, images[pick])
    np.savetxt(tmp_path / "one.csv", rows[rows[:, 784] == 3][:50], fmt="%d", delimiter=",")
    with pytest.raises(DataError, match="every row has label 3.*at least two classes"):
        load_mnist(tmp_path / "one.csv")
