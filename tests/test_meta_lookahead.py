"""The functional look-ahead: exact second-order meta-gradients, no side effects on the model."""

from __future__ import annotations

import torch
from torch import nn

from metaat.losses import ce
from metaat.meta import NoiseGenerator, NoiseSpec, functional_logits, lookahead_loss, lookahead_parameters
from metaat.threats import ThreatModel


def _tiny_problem() -> tuple[nn.Module, NoiseGenerator, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.Tanh(), nn.Linear(8, 3)).double()
    gen = NoiseGenerator(NoiseSpec(in_channels=1, hidden=4, source="input")).double()
    x = 0.3 + 0.4 * torch.rand(5, 1, 4, 4, generator=g, dtype=torch.float64)  # the box never binds
    y = torch.randint(0, 3, (5,), generator=g)
    noise = torch.randn(x.shape, generator=g, dtype=torch.float64)
    x_adv = x + 0.05 * torch.randn(x.shape, generator=g, dtype=torch.float64)
    return model, gen, x, y, noise, x_adv


def test_meta_gradient_matches_finite_differences() -> None:
    model, gen, x, y, noise, x_adv = _tiny_problem()
    threat = ThreatModel("linf", 0.1)

    def meta() -> torch.Tensor:
        return lookahead_loss(model, x + gen(x, noise, threat), x_adv, y, lr=0.5)

    params = list(gen.parameters())
    grads = torch.autograd.grad(meta(), params)
    assert all(float(g.abs().sum()) > 0 for g in grads)  # every generator parameter gets a meta-gradient
    g = torch.Generator().manual_seed(1)
    h = 1e-5
    for _ in range(3):
        direction = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
        analytic = sum(float((gr * d).sum()) for gr, d in zip(grads, direction, strict=True))
        with torch.no_grad():
            for p, d in zip(params, direction, strict=True):
                p.add_(h * d)
            plus = float(meta())
            for p, d in zip(params, direction, strict=True):
                p.sub_(2 * h * d)
            minus = float(meta())
            for p, d in zip(params, direction, strict=True):
                p.add_(h * d)
        numeric = (plus - minus) / (2 * h)
        assert abs(analytic - numeric) / max(abs(numeric), 1e-12) < 1e-3, (analytic, numeric)


def test_meta_gradient_is_second_order() -> None:
    """Without the look-ahead's graph the generator would get no signal from the adversarial loss."""
    model, gen, x, y, noise, x_adv = _tiny_problem()
    threat = ThreatModel("linf", 0.1)
    fast = lookahead_parameters(model, x + gen(x, noise, threat), y, 0.5, create_graph=False)
    outer = ce(functional_logits(model, fast, x_adv), y).mean()
    assert not outer.requires_grad or all(
        g is None for g in torch.autograd.grad(outer, list(gen.parameters()), allow_unused=True)
    )


def test_lookahead_is_one_sgd_step_and_leaves_the_model_alone() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 3))
    model.train()
    x, y = torch.rand(6, 1, 8, 8), torch.randint(0, 3, (6,))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fast = lookahead_parameters(model, x, y, 0.1, create_graph=False)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # BN stats untouched too
    loss = ce(model(x), y).mean()
    grads = torch.autograd.grad(loss, list(model.parameters()))
    for (name, p), g in zip(model.named_parameters(), grads, strict=True):
        torch.testing.assert_close(fast[name], p - 0.1 * g)
    model.load_state_dict(before)
    torch.testing.assert_close(functional_logits(model, dict(model.named_parameters()), x), model(x))
