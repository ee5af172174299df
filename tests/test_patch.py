"""The patch on a toy three-layer model: hook lifecycle, per-clip control, early stop, recording."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from torch import nn

from seen.hooks import ActivationRecorder
from seen.patch import SeenPatch
from seen.see import FrameLayout, frame_see


class ToyLayer(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.activation_fn = nn.GELU()
        self.fc2 = nn.Linear(16, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(self.activation_fn(self.fc1(x)))


class Toy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layers = nn.ModuleList(ToyLayer() for _ in range(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


PATHS = ["layers.1.activation_fn", "layers.2.activation_fn"]


def _bases(k: int = 3, seed: int = 1) -> dict[str, list[torch.Tensor]]:
    generator = torch.Generator().manual_seed(seed)
    return {
        name: [torch.linalg.qr(torch.randn(16, k, generator=generator))[0] for _ in PATHS]
        for name in ("white", "babble")
    }


def _hook_count(model: nn.Module) -> int:
    return sum(len(module._forward_hooks) for module in model.modules())


def test_patch_leaves_no_hooks_and_the_model_bit_identical() -> None:
    model, x = Toy(), torch.randn(2, 5, 8)
    before = model(x)
    patch = SeenPatch(model, PATHS, _bases())
    layout = FrameLayout.padded(torch.tensor([5, 5]), 5)
    with patch.scope(layout, torch.ones(2)):
        edited = model(x)
        assert _hook_count(model) == 2
    assert _hook_count(model) == 0
    assert not torch.equal(edited, before)
    assert torch.equal(model(x), before)
    with patch.scope(layout, torch.zeros(2)):
        assert torch.equal(model(x), before)  # lambda = 0 is the identity, bit for bit


def test_a_raising_forward_still_removes_the_hooks() -> None:
    model = Toy()
    patch = SeenPatch(model, PATHS, _bases())
    layout = FrameLayout.padded(torch.tensor([5]), 5)
    with pytest.raises(RuntimeError, match="boom"), patch.scope(layout, torch.ones(1)):
        model(torch.randn(1, 5, 8))
        raise RuntimeError("boom")
    assert _hook_count(model) == 0
    with pytest.raises(RuntimeError, match="already installed"), patch.installed(), patch.installed():
        pass
    assert _hook_count(model) == 0


def test_unknown_hook_path_fails_loudly() -> None:
    with pytest.raises(LookupError, match=r"layers\.7\.activation_fn"):
        SeenPatch(Toy(), ["layers.7.activation_fn"], {"white": [torch.zeros(16, 0)]})


def test_per_clip_strength_and_profile_in_one_batch() -> None:
    model, x = Toy(), torch.randn(3, 4, 8)
    patch = SeenPatch(model, PATHS, _bases())
    layout = FrameLayout.padded(torch.tensor([4, 4, 4]), 4)
    with patch.scope(layout, torch.tensor([0.0, 1.0, 1.0]), torch.tensor([0, 0, 1])) as readout:
        batched = model(x)
    report = readout.report()
    for clip, (strength, profile) in enumerate([(0.0, 0), (1.0, 0), (1.0, 1)]):
        with patch.scope(FrameLayout.padded(torch.tensor([4]), 4), torch.tensor([strength]), torch.tensor([profile])):
            alone = model(x[clip : clip + 1])
        assert torch.allclose(batched[clip], alone[0], atol=1e-6)
    assert report.per_layer.shape == (3, 2, 2)
    assert torch.all((report.per_layer >= 0) & (report.per_layer <= 1))
    # lambda = 1 empties each layer's own profile, lambda = 0 leaves the input SEE in place.
    assert report.residual_per_layer[1:].max() < 1e-6
    assert torch.allclose(report.residual_per_layer[0], report.per_layer[0, :, 0])


def test_each_clip_is_edited_with_its_own_profile_columns_only() -> None:
    # Three profiles of different widths (one empty at a layer); the clips use profiles 2 and 0 with
    # profile 1 between them unedited, so the rebuilt column span holds columns no clip may touch.
    generator = torch.Generator().manual_seed(3)
    widths = {"white": [2, 3], "pink": [4, 0], "babble": [1, 2]}
    bases = {
        name: [torch.linalg.qr(torch.randn(16, k, generator=generator))[0] for k in layer_widths]
        for name, layer_widths in widths.items()
    }
    controls = [(1.0, 2), (0.0, 1), (0.5, 0), (1.0, 1)]
    model, x = Toy(), torch.randn(len(controls), 4, 8)

    def reference(clip: int) -> torch.Tensor:
        strength, profile = controls[clip]
        name = list(bases)[profile]

        def edit(index: int) -> Callable[[nn.Module, object, torch.Tensor], torch.Tensor]:
            basis = bases[name][index]
            return lambda _m, _i, acts: acts - strength * (acts @ basis) @ basis.T

        handles = [model.get_submodule(path).register_forward_hook(edit(i)) for i, path in enumerate(PATHS)]
        try:
            return model(x[clip : clip + 1])[0]
        finally:
            for handle in handles:
                handle.remove()

    patch = SeenPatch(model, PATHS, bases)
    strength = torch.tensor([c[0] for c in controls])
    profile = torch.tensor([c[1] for c in controls])
    with patch.scope(FrameLayout.padded(torch.full((len(controls),), 4), 4), strength, profile):
        batched = model(x)
    for clip in range(len(controls)):
        assert torch.allclose(batched[clip], reference(clip), atol=1e-6), controls[clip]
    assert torch.equal(batched[1], model(x[1:2])[0])  # lambda 0: untouched, bit for bit


def test_profile_index_out_of_range_is_refused_before_the_forward() -> None:
    patch = SeenPatch(Toy(), PATHS, _bases())
    layout = FrameLayout.padded(torch.tensor([4, 4]), 4)
    with (
        pytest.raises(ValueError, match=r"profile indices must lie in \[0, 1\]"),
        patch.scope(layout, torch.zeros(2), torch.tensor([0, 2])),
    ):
        pass


def test_lambda_one_drives_the_measured_layer_see_to_zero() -> None:
    model, x = Toy(), torch.randn(1, 6, 8)
    bases = _bases()
    patch = SeenPatch(model, PATHS, bases)
    seen_after: list[torch.Tensor] = []
    module = model.get_submodule(PATHS[0])
    with patch.installed():
        # Registered after the patch, this hook sees what the patch passed on to the next layer.
        handle = module.register_forward_hook(lambda _m, _i, out: seen_after.append(out.detach()))
        try:
            with patch.scope(FrameLayout.padded(torch.tensor([6]), 6), torch.ones(1)) as readout:
                model(x)
        finally:
            handle.remove()
    flat = seen_after[0].reshape(-1, 16)
    assert readout.report().per_layer[0, 0, 0] > 0.05
    assert frame_see(flat, flat @ bases["white"][0]).max() < 1e-10


def test_padding_frames_do_not_enter_see() -> None:
    model = Toy()
    patch = SeenPatch(model, PATHS, _bases())
    x = torch.randn(1, 6, 8)
    padded = torch.cat([x[:, :4], 50 * torch.randn(1, 2, 8)], 1)
    with patch.score(FrameLayout.padded(torch.tensor([4]), 6)) as padded_readout:
        model(padded)
    with patch.score(FrameLayout.padded(torch.tensor([4]), 4)) as exact_readout:
        model(x[:, :4])
    assert torch.allclose(padded_readout.report().see, exact_readout.report().see, atol=1e-6)


def test_score_stops_after_the_last_critical_layer() -> None:
    model = Toy()
    reached: list[bool] = []
    model.layers[2].fc2.register_forward_hook(lambda *_: reached.append(True))
    patch = SeenPatch(model, PATHS, _bases())
    with patch.score(FrameLayout.padded(torch.tensor([3]), 3)) as readout:
        model(torch.randn(1, 3, 8))
    assert not reached
    assert readout.report().see.shape == (1, 2)


def test_recorder_pools_valid_frames_per_clip() -> None:
    model = Toy()
    x = torch.randn(2, 5, 8)
    recorded: list[torch.Tensor] = []
    model.layers[1].activation_fn.register_forward_hook(lambda _m, _i, out: recorded.append(out.detach()))
    pooled = ActivationRecorder(model, PATHS).record(FrameLayout.padded(torch.tensor([5, 2]), 5), lambda: model(x))
    assert len(pooled) == 2 and pooled[0].shape == (2, 16)
    assert torch.allclose(pooled[0][0], recorded[0][0].mean(0), atol=1e-6)
    assert torch.allclose(pooled[0][1], recorded[0][1, :2].mean(0), atol=1e-6)
