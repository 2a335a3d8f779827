"""FineAll (docs/protocol.md §6.2): for every task after T1, copy the pre-trained T1 backbone, add a
new head and fine-tune everything. One full model per task, so old tasks never change."""

from __future__ import annotations

import copy

from curb.backbone import PlainModel
from curb.method import TaskInfo, register

from .sinmo import SinMo


@register("fineall")
class FineAll(SinMo):
    summary = "copy of the pre-trained T1 model fine-tuned end to end per task"
    benchmark = True  # one of the `--methods all` set

    def new_model(self, task: TaskInfo) -> PlainModel:
        t1 = self.models[self.tasks[0].name]
        model = PlainModel(self.n_items, self.setup.backbone).to(self.device)
        model.backbone.load_state_dict(copy.deepcopy(t1.backbone.state_dict()))
        model.add_head(task.name, task.n_labels)
        return model
