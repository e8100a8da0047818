"""``eval_frozen``: run fully frozen modules in eval mode during training (dropout off, norm stats fixed).

Keras treats a non-trainable BatchNormalization as inference-mode; this does the same for any module whose
parameters are all frozen. A forward pre-hook on the root puts those subtrees back into eval mode each time
the training loop calls ``model.train()``.
"""

from __future__ import annotations

from torch import nn
from torch.utils.hooks import RemovableHandle


def frozen_subtrees(model: nn.Module) -> list[nn.Module]:
    """The largest subtrees whose parameters (at least one) are all frozen."""
    found: list[nn.Module] = []

    def visit(module: nn.Module) -> None:
        params = list(module.parameters())
        if params and not any(param.requires_grad for param in params):
            found.append(module)
            return
        for child in module.children():
            visit(child)

    visit(model)
    return found


class FrozenEvalMode:
    """Keeps fully frozen subtrees of ``model`` in eval mode while the model trains."""

    def __init__(self, model: nn.Module):
        self.model = model
        self.subtrees = frozen_subtrees(model)
        self._handle: RemovableHandle = model.register_forward_pre_hook(self._before_forward)

    def refresh(self) -> None:
        """Recompute the frozen subtrees (after a phase unfroze something), restoring train mode on the rest."""
        self.model.train(self.model.training)
        self.subtrees = frozen_subtrees(self.model)

    def _before_forward(self, module: nn.Module, args: tuple) -> None:
        if module.training:
            for subtree in self.subtrees:
                subtree.train(False)

    def remove(self) -> None:
        """Remove the hook."""
        self._handle.remove()
