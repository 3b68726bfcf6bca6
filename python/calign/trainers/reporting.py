"""report_to: where a trainer's logs go besides output_dir/metrics.jsonl,
which is always written.

'tensorboard' writes event files under output_dir/runs/<date>_<host> with
tensorboardX (calign's optional 'tensorboard' extra) or, where it is installed
with PyTorch, torch.utils.tensorboard; 'wandb' logs to Weights & Biases. The
metric names are transformers' (train/loss, eval/loss, ... at the global step),
so the dashboards read as a TRL run's. Neither package is a dependency of
calign: asking for one that is not installed is an error naming what to
install, when the config is built."""

import datetime
import importlib.util
import json
import os
import socket

from calign import checks

INTEGRATIONS = ("tensorboard", "wandb")
# transformers' other integrations, which calign does not report to.
OTHER_INTEGRATIONS = ("azure_ml", "clearml", "codecarbon", "comet_ml", "dagshub", "dvclive",
                      "flyte", "kubeflow", "mlflow", "neptune", "swanlab", "trackio")


def _installed(module):
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def tensorboard_available():
    return _installed("tensorboardX") or (_installed("tensorboard") and _installed("torch"))


def available_integrations():
    """The integrations whose package is installed (report_to 'all')."""
    found = []
    if tensorboard_available():
        found.append("tensorboard")
    if _installed("wandb"):
        found.append("wandb")
    return found


def resolve_report_to(report_to):
    """report_to as a list of integrations; 'none' is [], 'all' and None
    (transformers 4's meaning) are those installed. Raises ValueError naming
    report_to for an unknown or unsupported one, or one not installed."""
    if report_to is None or report_to == "all" or report_to == ["all"]:
        return available_integrations()
    if report_to == "none" or report_to == ["none"]:
        return []
    names = [report_to] if isinstance(report_to, str) else report_to
    checks.require(isinstance(names, (list, tuple)) and
                   all(isinstance(n, str) for n in names), "report_to", report_to,
                   "'none', 'all', an integration name or a list of them")
    for name in names:
        if name in OTHER_INTEGRATIONS:
            checks.require(False, "report_to", report_to,
                           f"one of {list(INTEGRATIONS)} or 'none' (reporting to {name!r} is "
                           "not supported yet; metrics.jsonl is always written)")
        checks.require(name in INTEGRATIONS, "report_to", report_to,
                       f"'none', 'all' or among {list(INTEGRATIONS)}")
    if "tensorboard" in names and not tensorboard_available():
        checks.require(False, "report_to", report_to,
                       "without 'tensorboard' unless tensorboardX is installed: pip install "
                       "'calign[tensorboard]' (or pip install tensorboardX)")
    if "wandb" in names and not _installed("wandb"):
        checks.require(False, "report_to", report_to,
                       "without 'wandb' unless wandb is installed: pip install wandb")
    return list(dict.fromkeys(names))


def rewrite_logs(entry):
    """transformers' names: eval_x -> eval/x, the others train/x."""
    return {(f"eval/{k[5:]}" if k.startswith("eval_") else f"train/{k}"): v
            for k, v in entry.items() if k != "step"}


def _summary_writer_class():
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter


class Reporters:
    """The open integrations of one train() call: log(entry), close()."""

    def __init__(self, args, config_dict):
        self.writer = self.wandb = None
        if "tensorboard" in args.report_to:
            log_dir = os.path.join(args.output_dir, "runs", datetime.datetime.now().strftime(
                "%b%d_%H-%M-%S") + "_" + socket.gethostname())
            self.writer = _summary_writer_class()(log_dir=log_dir)
            self.writer.add_text("args", json.dumps(config_dict, indent=2, default=str))
        if "wandb" in args.report_to:
            import wandb

            self.wandb = wandb
            if wandb.run is None:
                wandb.init(project=os.getenv("WANDB_PROJECT", "huggingface"),
                           name=args.run_name, config=config_dict)
            wandb.define_metric("train/global_step")
            wandb.define_metric("*", step_metric="train/global_step", step_sync=True)

    def log(self, entry, step):
        logs = rewrite_logs(entry)
        if self.writer is not None:
            for name, value in logs.items():
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(name, value, step)
            self.writer.flush()
        if self.wandb is not None:
            self.wandb.log({**logs, "train/global_step": step})

    def close(self):
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None
