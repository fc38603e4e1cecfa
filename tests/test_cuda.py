"""CUDA against the CPU: every fast path gives the CPU's numbers on a GPU, and both scripts
run there end to end. Marked `cuda`; skipped where torch sees no GPU (as in CI).

    python -m pytest -q -m cuda          # on a machine with a GPU
"""
import json

import pytest
import torch

import lsp_kd
import models

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]
CUDA = torch.device("cuda")


def close(a, b, tol=1e-4):
    """a (CUDA) equals b (CPU) to float32 rounding, relative to b's scale."""
    a, b = a.detach().cpu().double(), b.detach().cpu().double()
    assert a.shape == b.shape
    err = (a - b).abs().max().item() if a.numel() else 0.0
    assert err <= tol * max(1.0, b.abs().max().item()), err


def random_graph(N, E, gen):
    return torch.stack([torch.randint(0, N, (E,), generator=gen),
                        torch.randint(0, N, (E,), generator=gen)])


def test_scatter_softmax():
    gen = torch.Generator().manual_seed(0)
    src, index = torch.randn(5000, 4, generator=gen), torch.randint(0, 300, (5000,), generator=gen)
    close(models.scatter_softmax(src.to(CUDA), index.to(CUDA), 300),
          models.scatter_softmax(src, index, 300))


@pytest.mark.parametrize("in_dim, out_dim, heads, residual", [(50, 256, 4, False),
                                                                (136, 68, 2, True)])
def test_gatconv_forward_backward(in_dim, out_dim, heads, residual):
    gen = torch.Generator().manual_seed(0)
    ei, x = random_graph(600, 8000, gen), torch.randn(600, in_dim, generator=gen)
    conv = models.GATConv(in_dim, out_dim, heads, residual=residual)
    conv_gpu = models.GATConv(in_dim, out_dim, heads, residual=residual).to(CUDA)
    conv_gpu.load_state_dict(conv.state_dict())
    x_cpu, x_gpu = x.clone().requires_grad_(), x.to(CUDA).requires_grad_()
    out_cpu, out_gpu = conv(x_cpu, ei), conv_gpu(x_gpu, ei.to(CUDA))
    close(out_gpu, out_cpu)
    (out_cpu ** 2).sum().backward()
    (out_gpu ** 2).sum().backward()
    close(x_gpu.grad, x_cpu.grad, 1e-3)
    for (name, p), q in zip(conv.named_parameters(), conv_gpu.parameters()):
        close(q.grad, p.grad, 1e-3)


@pytest.mark.parametrize("F_", [3, 64])
def test_knn_graph_same_neighbours(F_):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 512, F_, generator=gen)
    cpu, gpu = models.knn_graph(x, 20), models.knn_graph(x.to(CUDA), 20).cpu()
    assert torch.equal(gpu[1], cpu[1])
    # the neighbour sets agree (the order among ties and near-ties may differ)
    assert torch.equal(gpu[0].view(-1, 20).sort(1).values, cpu[0].view(-1, 20).sort(1).values)


@pytest.mark.parametrize("train", [True, False])
def test_edgeconv(train):
    gen = torch.Generator().manual_seed(0)
    pts = torch.randn(4, 256, 16, generator=gen)
    ei = models.knn_graph(pts, 10)
    conv = models.EdgeConv(16, 32)
    with torch.no_grad():  # a BN with non-trivial statistics, so the eval path is tested
        conv.bn.running_mean.uniform_(-1, 1, generator=gen)
        conv.bn.running_var.uniform_(0.5, 2, generator=gen)
        conv.bn.weight.uniform_(-2, 2, generator=gen)  # negative scales flip the max
        conv.bn.bias.uniform_(-1, 1, generator=gen)
    conv_gpu = models.EdgeConv(16, 32).to(CUDA)
    conv_gpu.load_state_dict(conv.state_dict())
    conv.train(train), conv_gpu.train(train)
    x = pts.reshape(-1, 16)
    for k in (None, 10):  # the generic path, and the fused one for knn_graph's layout
        close(conv_gpu(x.to(CUDA), ei.to(CUDA), k), conv(x, ei, k))


def test_dgcnn_teacher_and_student():
    gen = torch.Generator().manual_seed(0)
    pts = torch.randn(8, 256, 3, generator=gen)
    for build in (models.dgcnn_teacher, models.dgcnn_student):
        torch.manual_seed(0)
        net = build().eval()
        net_gpu = build().to(CUDA).eval()
        net_gpu.load_state_dict(net.state_dict())
        with torch.no_grad():
            close(net_gpu(pts.to(CUDA)), net(pts), 1e-3)
        net.train(), net_gpu.train()  # a training step's gradients (dropout off to compare)
        for m in list(net.modules()) + list(net_gpu.modules()):
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.0
        net(pts).logsumexp(1).sum().backward()
        net_gpu(pts.to(CUDA)).logsumexp(1).sum().backward()
        for p, q in zip(net.parameters(), net_gpu.parameters()):
            close(q.grad, p.grad, 1e-2)


@pytest.mark.parametrize("kernel", list(lsp_kd.KERNELS))
def test_lsp_loss_in_several_gpu_blocks(kernel):
    # E * 2F = 300,000 * 128 > 16 * 2^19: PairTerms splits the edges into GPU blocks (16 times
    # the CPU's) in its forward and backward; values and gradients must equal the CPU's
    gen = torch.Generator().manual_seed(0)
    N, E, F_ = 20_000, 300_000, 64
    assert E * 2 * F_ > 16 * lsp_kd.BLOCK
    ei = random_graph(N, E, gen)
    scale = 0.1 if kernel in ("l2", "poly", "linear") else 1.0  # keeps SIM in a sane range
    f_s, f_t = scale * torch.randn(N, F_, generator=gen), scale * torch.randn(N, 48, generator=gen)
    a, b = f_s.clone().requires_grad_(), f_s.to(CUDA).requires_grad_()
    loss_cpu = lsp_kd.lsp_loss(a, f_t, ei, kernel=kernel)
    loss_gpu = lsp_kd.lsp_loss(b, f_t.to(CUDA), ei.to(CUDA), kernel=kernel)
    close(loss_gpu, loss_cpu, 1e-3)
    loss_cpu.backward(), loss_gpu.backward()
    close(b.grad, a.grad, 1e-3)


@pytest.mark.parametrize("kernel", list(lsp_kd.KERNELS))
def test_knn_lsp_loss_in_several_gpu_blocks(kernel):
    # N * (k_s + k_t + 1) * F = 20,000 * 31 * 64 > 16 * 2^19: several GPU blocks, as above
    gen = torch.Generator().manual_seed(0)
    N, F_ = 20_000, 64
    nbr_s, nbr_t = (torch.randint(0, N, (N, k), generator=gen) for k in (10, 20))
    scale = 0.1 if kernel in ("l2", "poly", "linear") else 1.0
    f_s, f_t = scale * torch.randn(N, F_, generator=gen), scale * torch.randn(N, 48, generator=gen)
    a, b = f_s.clone().requires_grad_(), f_s.to(CUDA).requires_grad_()
    loss_cpu = lsp_kd.knn_lsp_loss(a, f_t, nbr_s, nbr_t, kernel=kernel)
    loss_gpu = lsp_kd.knn_lsp_loss(b, f_t.to(CUDA), nbr_s.to(CUDA), nbr_t.to(CUDA), kernel=kernel)
    close(loss_gpu, loss_cpu, 1e-3)
    loss_cpu.backward(), loss_gpu.backward()
    close(b.grad, a.grad, 1e-3)


def test_lsp_loss_half_precision_and_union_graph():
    gen = torch.Generator().manual_seed(0)
    ei_s, ei_t = random_graph(500, 4000, gen), random_graph(500, 4000, gen)
    union = lsp_kd.union_graph(ei_s.to(CUDA), ei_t.to(CUDA), 500)
    assert torch.equal(union.cpu(), lsp_kd.union_graph(ei_s, ei_t, 500))
    f_s = (30 * torch.randn(500, 32, generator=gen)).to(CUDA).half().requires_grad_()
    f_t = (30 * torch.randn(500, 32, generator=gen)).to(CUDA).half()
    loss = lsp_kd.lsp_loss(f_s, f_t, union, kernel="rbf", sigma=20.0)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert torch.isfinite(f_s.grad).all()


def test_baselines():
    gen = torch.Generator().manual_seed(0)
    f_s, f_t = torch.randn(300, 16, generator=gen), torch.randn(300, 24, generator=gen)
    logits_s, logits_t = torch.randn(300, 40, generator=gen), torch.randn(300, 40, generator=gen)
    batch = torch.arange(300) // 100
    reg = torch.nn.Linear(16, 24)
    reg_gpu = torch.nn.Linear(16, 24).to(CUDA)
    reg_gpu.load_state_dict(reg.state_dict())
    g = lambda t: t.to(CUDA)  # noqa: E731
    close(lsp_kd.at_loss(g(f_s), g(f_t), g(batch)), lsp_kd.at_loss(f_s, f_t, batch))
    close(lsp_kd.fitnet_loss(g(f_s), g(f_t), reg_gpu), lsp_kd.fitnet_loss(f_s, f_t, reg))
    for multilabel in (False, True):
        close(lsp_kd.kd_loss(g(logits_s), g(logits_t), multilabel=multilabel),
              lsp_kd.kd_loss(logits_s, logits_t, multilabel=multilabel))


def test_hkd():
    """Holistic KD (not in the LSP paper): loss and gradients (student, both maps)."""
    gen = torch.Generator().manual_seed(0)
    f_s, f_t = torch.randn(300, 16, generator=gen), torch.randn(300, 24, generator=gen)
    maps = lsp_kd.HolisticMaps(16, 24, 32, 2)
    maps_gpu = lsp_kd.HolisticMaps(16, 24, 32, 2).to(CUDA)
    maps_gpu.load_state_dict(maps.state_dict())
    x_cpu, x_gpu = f_s.clone().requires_grad_(), f_s.to(CUDA).requires_grad_()
    loss_cpu, loss_gpu = lsp_kd.hkd_loss(x_cpu, f_t, maps), lsp_kd.hkd_loss(x_gpu, f_t.to(CUDA),
                                                                              maps_gpu)
    close(loss_gpu, loss_cpu)
    loss_cpu.backward()
    loss_gpu.backward()
    close(x_gpu.grad, x_cpu.grad, 1e-3)
    for p, q in zip(maps.parameters(), maps_gpu.parameters()):
        close(q.grad, p.grad, 1e-3)
    half = lsp_kd.hkd_loss(f_s.to(CUDA).half(), f_t.to(CUDA).half(), maps_gpu)
    assert half.dtype == torch.float32 and torch.isfinite(half)


@pytest.mark.parametrize("script", ["train_ppi", "train_modelnet"])
@pytest.mark.parametrize("flags", [[], ["--lsp"], ["--lsp", "--sigma", "auto"],
                                   ["--hkd", "--kd"]])
def test_script_dry_run_on_cuda(tmp_path, monkeypatch, script, flags):
    monkeypatch.chdir(tmp_path)
    __import__(script).main(["--dry-run", "--device", "cuda", *flags])
    (path,) = tmp_path.glob("runs/*/*/results.json")
    res = json.loads(path.read_text())
    assert res["args"]["device"] == "cuda" and 0 <= res["ls_kl"]
    assert -1 <= res["rank_corr"] <= 1 and res["structure_by_epoch"]["1"]["ls_kl_auto"] >= 0
