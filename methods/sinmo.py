"""SinMo (docs/protocol.md §6.1): one fresh model per task, trained alone. Its R(Ti, Ti) is the
reference R̄ of forward transfer. T1 is the plain pre-trained NextItNet (docs/protocol.md §4.5), which the
runner trains once and shares with every method that starts from it."""

from __future__ import annotations

from torch import Tensor, nn

from curb.backbone import PlainModel
from curb.method import Method, Setup, TaskData, TaskInfo, register


@register("sinmo")
class SinMo(Method):
    summary = "single model per task from random init (no transfer; FWT reference)"
    benchmark = True  # one of the `--methods all` set
    grows_items = True

    def __init__(self, setup: Setup):
        super().__init__(setup)
        self.models = nn.ModuleDict()

    def new_model(self, task: TaskInfo) -> PlainModel:
        """A freshly initialised backbone with the task's head."""
        model = PlainModel(self.n_items, self.setup.backbone).to(self.device)
        model.add_head(task.name, task.n_labels)
        return model

    def grow_items(self, n_new: int) -> None:
        for model in self.models.values():  # a past task's model never reads the new rows
            model.backbone.grow_items(n_new)

    def learn_task(self, task: TaskInfo, train: TaskData, val: TaskData, fit) -> None:
        if task.kind == "next_item" and self.setup.pretrained_t1 is not None:
            self.tasks.append(task)
            self.models[task.name] = self.setup.pretrained_t1()
            return
        super().learn_task(task, train, val, fit)

    def begin_task(self, task: TaskInfo) -> None:
        self.models[task.name] = self.new_model(task)

    def trainable_parameters(self, task: TaskInfo):
        return self.models[task.name].parameters()

    def head(self, task: str) -> nn.Linear:
        return self.models[task].heads[task]

    def represent(self, task: str, x: Tensor, *, train: bool = False, all_positions: bool = False,
                  batch=None) -> Tensor:
        return self.models[task].backbone.read(x, all_positions=all_positions)

    def modules(self) -> dict[str, nn.Module]:
        return {"models": self.models}

    def load_extra_state(self, state: dict) -> None:
        for t in self.tasks:  # recreate the per-task models the checkpoint fills
            if t.name not in self.models:
                self.models[t.name] = PlainModel(self.n_items, self.setup.backbone).to(self.device)
                self.models[t.name].add_head(t.name, t.n_labels)
