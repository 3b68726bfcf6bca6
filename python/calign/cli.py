"""The `calign` command line (also `python -m calign`).

    calign                      build information and a self-check of the kernels
    calign info                 the same
    calign info --model PATH    what a checkpoint is and whether calign runs it (headers only)
    calign train METHOD ...     METHOD in sft, rm, dpo, kto, orpo, cpo
    calign generate ...         text from a checkpoint
    calign eval ...             preference accuracy of a policy (against a reference) or of a reward model
    calign align ...            word alignment of a `source ||| target` corpus, Pharaoh links out
    calign demo [--method M]    SFT then DPO (or kto, orpo, simpo) on the bundled addition task

A user error (missing file, unknown field, bad value) prints one line and
exits with status 2; anything else keeps its traceback.
"""

import argparse
import dataclasses
import json
import os
import sys

import numpy as np

import calign
from calign import checks, selfcheck

TRAINERS = {
    "sft": ("SFTTrainer", "SFTConfig"),
    "rm": ("RewardTrainer", "RewardConfig"),
    "dpo": ("DPOTrainer", "DPOConfig"),
    "kto": ("KTOTrainer", "KTOConfig"),
    "orpo": ("ORPOTrainer", "ORPOConfig"),
    "cpo": ("CPOTrainer", "CPOConfig"),
}
WITH_REFERENCE = ("dpo", "kto")


class UsageError(Exception):
    """An error in what the user asked for: reported in one line, exit status 2."""


class inputs_checked:
    """Around the loading of files, records and settings, the errors calign raises
    for bad input (each naming the problem) are the user's: one line, status 2.
    Training itself is outside, so an internal error keeps its traceback."""

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if kind is not None and issubclass(kind, (FileNotFoundError, KeyError, ValueError,
                                                  TypeError)):
            message = error.args[0] if isinstance(error, KeyError) and error.args else error
            raise UsageError(str(message)) from None
        return False


# ---- info ------------------------------------------------------------------------------------

def cpu_features():
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f
                          if line.startswith("flags")), [])
    except OSError:
        return []
    return [x for x in ("avx2", "fma", "avx512f", "avx512bw", "avx512vl") if x in flags]


def command_info(_args):
    info = calign.build_info()
    print(f"calign {calign.__version__}")
    print(f"BLAS: {info['blas']} — {info['blas_config']}")
    print(f"BLAS kernel (core type): {info['blas_core']}")
    print(f"threads: {info['threads']} of {info['cores']} cores (OpenMP {info['openmp']})")
    print(f"CPU: {info['cpu']} ({', '.join(cpu_features()) or 'no AVX2'})")
    err_logp, err_grad, seconds = selfcheck.run()
    ok = err_logp < 1e-4 and err_grad < 1e-4
    print(f"self-check of the fused log-prob kernel against NumPy (256 x 5003 vocab): "
          f"max |dlogp| = {err_logp:.2e}, max |dgrad| = {err_grad:.2e}, "
          f"{seconds * 1e3:.1f} ms — {'OK' if ok else 'FAILED'}")
    return 0 if ok else 1


def command_info_model(args):
    """Describes a checkpoint from its config and safetensors headers; exit
    status 1 when calign cannot run it."""
    from calign.model.summary import describe_checkpoint, summary_lines

    if not os.path.isdir(args.model):
        raise UsageError(f"--model {args.model!r} is not a folder")
    with inputs_checked():
        summary = describe_checkpoint(args.model)
    print("\n".join(summary_lines(summary)))
    return 0 if summary["runnable"] else 1


# ---- train -------------------------------------------------------------------------------------

def read_config_file(path):
    if not os.path.isfile(path):
        raise UsageError(f"config file {path!r} does not exist")
    with open(path) as f:
        text = f.read()
    try:
        if path.endswith((".yaml", ".yml")):
            import yaml
            values = yaml.safe_load(text)
        else:
            values = json.loads(text)
    except Exception as exc:  # yaml and json raise their own error types
        raise UsageError(f"cannot parse config file {path!r}: {exc}") from None
    if not isinstance(values, dict):
        raise UsageError(f"config file {path!r} must hold a mapping of field: value")
    return values


def parse_field_value(config_class, name, text):
    """A command-line string as the config field's type."""
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    if name not in fields:
        raise UsageError(f"unknown option --{name} for {config_class.__name__}")
    default = fields[name].default
    kind = fields[name].type
    if kind in (bool, "bool") or isinstance(default, bool):
        if text.lower() not in ("true", "false", "1", "0", "yes", "no"):
            raise UsageError(f"--{name} takes true or false, not {text!r}")
        return text.lower() in ("true", "1", "yes")
    if text.lower() == "none":
        return None
    try:
        if kind in (int, "int"):
            return int(text)
        if kind in (float, "float"):
            return float(text)
    except ValueError:
        raise UsageError(f"--{name} takes a number, not {text!r}") from None
    if kind in (list, "list") or (name == "loss_type" and "," in text):
        parts = text.split(",")
        try:
            return [float(p) for p in parts]
        except ValueError:
            return parts
    return text


def split_field_flags(tokens):
    """['--beta', '0.2', ...] -> {'beta': '0.2'} (each field flag takes one value)."""
    values, i = {}, 0
    while i < len(tokens):
        token = tokens[i]
        if not token.startswith("--"):
            raise UsageError(f"unexpected argument {token!r}")
        name = token[2:]
        if "=" in name:
            name, value = name.split("=", 1)
            i += 1
        else:
            if i + 1 >= len(tokens):
                raise UsageError(f"--{name} needs a value")
            value = tokens[i + 1]
            i += 2
        values[name] = value
    return values


def command_train(args, field_tokens):
    trainer_name, config_name = TRAINERS[args.method]
    config_class = getattr(calign, config_name)
    values = read_config_file(args.config) if args.config else {}
    for name, text in split_field_flags(field_tokens).items():
        values[name] = parse_field_value(config_class, name, text)
    values["output_dir"] = args.output_dir or values.get("output_dir", "trainer_output")
    with inputs_checked():
        config = config_class(**values)
    for path, what in ((args.model, "--model"), (args.dataset, "--dataset")):
        if not os.path.exists(path):
            raise UsageError(f"{what} {path!r} does not exist")
    kwargs = dict(args=config, train_dataset=args.dataset, eval_dataset=args.eval_dataset,
                  processing_class=args.tokenizer or (args.model if os.path.isfile(
                      os.path.join(args.model, "tokenizer.json")) else None))
    if args.method in WITH_REFERENCE and args.ref_model:
        kwargs["ref_model"] = args.ref_model
    with inputs_checked():
        trainer = getattr(calign, trainer_name)(args.model, **kwargs)
    trainer.train(resume_from_checkpoint=args.resume or None)
    final = os.path.join(config.output_dir, "final")
    trainer.save_model(final)
    last = [h for h in trainer.state.log_history if "loss" in h]
    print(f"trained {trainer.state.global_step} steps; last loss "
          f"{last[-1]['loss']:.4f}; model saved to {final}" if last else f"saved to {final}")
    return 0


# ---- generate and eval -------------------------------------------------------------------------

def load_tokenizer(path):
    if not os.path.isfile(os.path.join(path, "tokenizer.json")):
        raise UsageError(f"no tokenizer.json in {path!r}: pass --tokenizer")
    return calign.Tokenizer.from_pretrained(path)


def command_generate(args):
    if not os.path.isdir(args.model):
        raise UsageError(f"--model {args.model!r} is not a folder")
    with inputs_checked():
        model = calign.Model.from_pretrained(args.model)
        tokenizer = load_tokenizer(args.tokenizer or args.model)
    prompt_ids = tokenizer.encode(args.prompt)
    if not prompt_ids:
        raise UsageError("--prompt is empty after tokenization")
    with inputs_checked():
        outputs = model.generate([prompt_ids], max_new_tokens=args.max_new_tokens,
                                 do_sample=args.do_sample, temperature=args.temperature,
                                 top_k=args.top_k, top_p=args.top_p,
                                 eos_token_id=tokenizer.eos_token_id,
                                 num_return_sequences=args.num_return_sequences, seed=args.seed)
    for tokens in outputs:
        print(tokenizer.decode(tokens, skip_special_tokens=True))
    return 0


def command_eval(args):
    from calign.data import Truncation, prepare_preference_data
    from calign.model.config import load_config_file
    from calign.model.preference_batch import PackedPreferences, check_fits, reward_margins

    if not os.path.exists(args.dataset):
        raise UsageError(f"--dataset {args.dataset!r} does not exist")
    with inputs_checked():
        architectures = load_config_file(args.model).get("architectures") or []
        tokenizer = load_tokenizer(args.tokenizer or args.model) if os.path.isfile(
            os.path.join(args.tokenizer or args.model, "tokenizer.json")) else None
        examples = prepare_preference_data(args.dataset, tokenizer,
                                           Truncation(max_length=args.max_length), "dataset")
        batch_size = checks.integer("--batch_size", args.batch_size, 1)
        is_reward_model = any(a.endswith("ForSequenceClassification") for a in architectures)
        model = (calign.RewardModel if is_reward_model else calign.Model).from_pretrained(
            args.model)
        check_fits(model, examples, "dataset")
        if not is_reward_model:
            if not args.ref_model:
                raise UsageError("evaluating a policy needs --ref_model (its implicit reward "
                                 "is beta * log(policy / reference))")
            reference = calign.Model.from_pretrained(args.ref_model)
            check_fits(reference, examples, "dataset", "ref_model")
            beta = checks.real("--beta", args.beta, 0.0, open_low=True)
    if is_reward_model:
        margins = []
        for i in range(0, len(examples), batch_size):
            packed = PackedPreferences(examples[i:i + batch_size])
            hidden = model.forward_packed(packed.batch)
            rewards = model.rewards_of(hidden, model.reward_rows(packed.batch)).reshape(-1, 2)
            margins.append(rewards[:, 0] - rewards[:, 1])
        margins = np.concatenate(margins)
    else:
        margins = reward_margins(model, reference, examples, beta, batch_size)
    print(json.dumps({"pairs": int(margins.size), "accuracy": float((margins > 0).mean()),
                      "mean_margin": float(margins.mean())}))
    return 0


# ---- word alignment ------------------------------------------------------------------------------

SYMMETRIZATIONS = {"intersect": "intersect", "union": "union", "grow-diag": "grow-diag",
                   "gdf": "grow-diag-final", "grow-diag-final": "grow-diag-final",
                   "gdfa": "grow-diag-final-and", "grow-diag-final-and": "grow-diag-final-and"}


def command_align(args):
    from calign import wordalign

    if not os.path.isfile(args.input):
        raise UsageError(f"--input {args.input!r} does not exist")
    with inputs_checked():
        pairs = wordalign.read_fast_align(args.input)
        if args.method == "joint":
            # both directions at once: --symmetrize picks a heuristic over
            # the two directions' links instead of the soft union
            model = wordalign.JointHMM().fit(pairs, args.iterations)
            method = SYMMETRIZATIONS[args.symmetrize] if args.symmetrize else \
                ("reverse" if args.reverse else "soft-union")
            links = model.align(pairs, method)
        else:
            model_class = {"ibm1": wordalign.IBM1, "ibm2": wordalign.IBM2,
                           "hmm": wordalign.HMM}[args.method]
            forward = model_class(reverse=args.reverse).fit(pairs, args.iterations)
            links = forward.align(pairs)
            if args.symmetrize:
                backward = model_class(reverse=not args.reverse).fit(pairs, args.iterations)
                links = [wordalign.symmetrize(a, b, SYMMETRIZATIONS[args.symmetrize])
                         for a, b in zip(links, backward.align(pairs))]
    for pair_links in links:
        print(wordalign.format_pharaoh(pair_links))
    return 0


def command_demo(args):
    from calign.demo.run import run

    run(args.output_dir, method=args.method, quick=args.quick)
    return 0


# ---- entry point -------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def build_parser():
    parser = _Parser(prog="calign", description="Alignment training with a C core.")
    commands = parser.add_subparsers(dest="command")
    info = commands.add_parser("info", help="build information and a self-check; with --model, "
                                            "what a checkpoint is")
    info.add_argument("--model", help="checkpoint folder to describe (family, parameters, "
                                      "dtypes, ...) and check, without reading its weights; "
                                      "exit status 1 when calign cannot run it")
    train = commands.add_parser("train", help="train a model; other --field value flags set "
                                              "config fields (TRL's names)")
    train.add_argument("method", choices=sorted(TRAINERS))
    train.add_argument("--model", required=True, help="checkpoint folder")
    train.add_argument("--dataset", required=True, help="JSON Lines file or folder")
    train.add_argument("--eval_dataset")
    train.add_argument("--output_dir")
    train.add_argument("--config", help="YAML or JSON file of config fields (flags override)")
    train.add_argument("--tokenizer", help="tokenizer folder (default: the model's)")
    train.add_argument("--ref_model", help="reference checkpoint (dpo, kto)")
    train.add_argument("--resume", help="checkpoint folder to resume from")
    generate = commands.add_parser("generate", help="generate text from a checkpoint")
    generate.add_argument("--model", required=True)
    generate.add_argument("--prompt", required=True)
    generate.add_argument("--tokenizer")
    generate.add_argument("--max_new_tokens", type=int, default=32)
    generate.add_argument("--do_sample", action="store_true")
    generate.add_argument("--temperature", type=float, default=1.0)
    generate.add_argument("--top_k", type=int, default=0)
    generate.add_argument("--top_p", type=float, default=1.0)
    generate.add_argument("--num_return_sequences", type=int, default=1)
    generate.add_argument("--seed", type=int, default=0)
    evaluate = commands.add_parser("eval", help="preference accuracy and margins")
    evaluate.add_argument("--model", required=True)
    evaluate.add_argument("--dataset", required=True)
    evaluate.add_argument("--ref_model")
    evaluate.add_argument("--tokenizer")
    evaluate.add_argument("--beta", type=float, default=0.1)
    evaluate.add_argument("--max_length", type=int, default=1024)
    evaluate.add_argument("--batch_size", type=int, default=8)
    demo = commands.add_parser("demo", help="SFT then a preference method on a bundled task")
    demo.add_argument("--method", choices=["dpo", "kto", "orpo", "simpo"], default="dpo")
    demo.add_argument("--quick", action="store_true", help="fewer steps (for tests)")
    demo.add_argument("--output_dir", default="calign_demo")
    align = commands.add_parser("align", help="word alignment (fast_align's habits)")
    align.add_argument("--method", choices=["ibm1", "ibm2", "hmm", "joint"], default="ibm2",
                       help="joint: both HMMs by agreement, fertility sampling, soft union "
                            "(the most accurate)")
    align.add_argument("--input", "-i", required=True, help="`source ||| target` a line")
    align.add_argument("--reverse", "-r", action="store_true")
    align.add_argument("--symmetrize", choices=sorted(SYMMETRIZATIONS))
    align.add_argument("--iterations", "-I", type=int, default=5)
    return parser


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        parser = build_parser()
        args, rest = parser.parse_known_args(argv)
        if args.command in (None, "info"):
            if rest:
                raise UsageError(f"unexpected arguments {' '.join(rest)}")
            if getattr(args, "model", None) is not None:
                return command_info_model(args)
            return command_info(args)
        if args.command == "train":
            return command_train(args, rest)
        if rest:
            raise UsageError(f"unexpected arguments {' '.join(rest)}")
        if args.command == "generate":
            return command_generate(args)
        if args.command == "align":
            return command_align(args)
        if args.command == "demo":
            return command_demo(args)
        return command_eval(args)
    except UsageError as exc:
        print(f"calign: error: {exc}", file=sys.stderr)
        return 2
