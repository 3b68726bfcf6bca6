"""TR-DPO's reference sync (Gorbatovski et al. 2024), for the trainers whose
config has sync_ref_model: every ref_model_sync_steps optimizer steps,
ref <- alpha * policy + (1 - alpha) * ref; the moved reference is saved in
each checkpoint (ref_model/) and restored on resume."""

import os

from calign.model import Model


class SyncedReference:
    """Mixed into a BaseTrainer with self.ref_model (a Model of the policy's
    shape when args.sync_ref_model)."""

    def _after_optimizer_step(self):
        a = self.args
        if a.sync_ref_model and self.state.global_step % a.ref_model_sync_steps == 0:
            self.ref_model.params *= 1.0 - a.ref_model_mixup_alpha
            self.ref_model.params += a.ref_model_mixup_alpha * self.model.params

    def _save_extra_files(self, folder):
        if self.args.sync_ref_model:
            self.ref_model.save_pretrained(os.path.join(folder, "ref_model"), dtype="float32")

    def _load_extra_state(self, state, path):
        if self.args.sync_ref_model:
            saved = Model.from_pretrained(os.path.join(path, "ref_model"))
            self.ref_model.params[...] = saved.params
