"""The `calign` command line (also `python -m calign`).

    calign                      build information and a self-check of the kernels
    calign info                 the same
    calign info --model PATH    what a checkpoint is and whether calign runs it (headers only)
    calign train METHOD ...     METHOD in sft, rm, dpo, kto, orpo, cpo
    calign generate ...         an answer from a checkpoint (through its chat template, or
                                with --urial URIAL's in-context prompt for a base model)
    calign chat ...             a conversation with a checkpoint in the terminal
    calign eval ...             preference accuracy of a policy (against a reference) or of a reward model
    calign align ...            word alignment of a `source ||| target` corpus, Pharaoh links out
    calign synthesize magpie    instructions, answers (or preference pairs) a chat model
                                writes from its chat template alone (Magpie), as JSON Lines
    calign demo [--method M]    SFT then DPO (or kto, orpo, simpo, grpo, rloo) on the bundled
                                addition task

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
from calign import chat, checks, selfcheck
from calign.demo.run import METHODS

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

# The settings of TRL's `trl dpo` (etc.) scripts that a recipe YAML holds beside
# the config's fields (TRL's ScriptArguments, ModelConfig, DatasetMixtureConfig).
# model_name_or_path and dataset_name stand for --model and --dataset.
TRL_SCRIPT_USED = ("model_name_or_path", "dataset_name")
# Only False: what they ask for calign cannot do.
TRL_SCRIPT_REFUSED = {
    "load_in_8bit": "quantized training is not supported",
    "load_in_4bit": "quantized training is not supported",
}
# TRL's ModelConfig LoRA settings (and their defaults there), which become the
# trainer's peft_config when use_peft is true, as TRL's get_peft_config does
TRL_SCRIPT_LORA = {
    "lora_r": ("r", 16), "lora_alpha": ("lora_alpha", 32), "lora_dropout": ("lora_dropout", 0.05),
    "lora_target_modules": ("target_modules", None), "lora_modules_to_save": (
        "modules_to_save", None), "lora_task_type": ("task_type", "CAUSAL_LM"),
    "use_rslora": ("use_rslora", False), "use_dora": ("use_dora", False),
}
# Ignored, named in one warning: calign loads local folders and files as float32
# with its own kernels (a dataset split, a revision, an attention kernel change
# nothing).
TRL_SCRIPT_IGNORED = (
    "dataset_config", "dataset_train_split", "dataset_test_split", "dataset_streaming",
    "ignore_bias_buffers", "model_revision", "dtype", "torch_dtype", "attn_implementation",
    "bnb_4bit_quant_type", "use_bnb_nested_quant", "bnb_4bit_quant_storage", "streaming",
    "test_split_size")


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


def split_script_settings(values, path):
    """Takes TRL's script settings out of a config file's values: returns
    {model_name_or_path, dataset_name} found, after one warning naming the
    ignored ones; a setting calign cannot honour is a UsageError."""
    used = {key: values.pop(key) for key in TRL_SCRIPT_USED if key in values}
    for key, reason in TRL_SCRIPT_REFUSED.items():
        value = values.pop(key, False)
        if value not in (False, None):
            raise UsageError(f"{key} must be false in {path} ({reason}), got {value!r}")
    used["peft_config"] = lora_from_script(values, path)
    if values.pop("datasets", None):
        raise UsageError(f"datasets (a dataset mixture) in {path} is not supported: give one "
                         "local file as dataset_name or --dataset")
    ignored = [key for key in TRL_SCRIPT_IGNORED if key in values]
    for key in ignored:
        values.pop(key)
    if ignored:
        print(f"calign: warning: {path}: ignoring TRL script settings with no meaning here "
              f"(calign loads local files, in float32, with its own kernels): "
              f"{', '.join(ignored)}", file=sys.stderr)
    return used


def lora_from_script(values, path):
    """The calign.LoraConfig a recipe's use_peft and lora_* settings ask for
    (TRL's ModelConfig defaults for the ones it leaves out), or None without
    use_peft (its lora_* settings then change nothing, as in TRL)."""
    use_peft = values.pop("use_peft", False)
    if use_peft not in (True, False, None):
        raise UsageError(f"use_peft must be true or false in {path}, got {use_peft!r}")
    target_parameters = values.pop("lora_target_parameters", None)
    settings = {name: values.pop(key, default) for key, (name, default) in TRL_SCRIPT_LORA.items()}
    if not use_peft:
        return None
    if target_parameters is not None:
        raise UsageError(f"lora_target_parameters must be null in {path} (LoRA on parameters "
                         f"rather than modules is not supported), got {target_parameters!r}")
    with inputs_checked():
        return calign.LoraConfig(**settings)


def parse_number(kind, text):
    """int or float text for a field of type int or float (an integral float
    field's text is an int, as transformers' *_steps fields take)."""
    try:
        return int(text)
    except ValueError:
        if kind in (int, "int"):
            raise
        return float(text)


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
        if kind in (int, "int", float, "float"):
            return parse_number(kind, text)
    except ValueError:
        raise UsageError(f"--{name} takes a number, not {text!r}") from None
    if kind in (list, "list") or (name == "loss_type" and "," in text):
        parts = text.split(",")
        try:
            return [float(p) for p in parts]
        except ValueError:
            return parts
    if kind in (object, "object") and text.lower() in ("true", "false"):
        return text.lower() == "true"
    if kind in (object, "object") and text[:1] in "{[":  # a mapping or a list, as JSON
        try:
            return json.loads(text)
        except ValueError:
            raise UsageError(f"--{name} takes JSON here, not {text!r}") from None
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


def check_file_fields(config_class, values, path):
    """Config-file values: each key a field; a number YAML read as text (PyYAML
    reads 5e-7 as a string) as the field's number."""
    fields = {f.name: f for f in dataclasses.fields(config_class)}
    for name, value in values.items():
        if name not in fields:
            raise UsageError(f"unknown field {name!r} in {path} for {config_class.__name__}")
        if isinstance(value, str) and fields[name].type in (int, "int", float, "float"):
            try:
                values[name] = parse_number(fields[name].type, value)
            except ValueError:
                pass  # the config names the field and the value


def command_train(args, field_tokens):
    trainer_name, config_name = TRAINERS[args.method]
    config_class = getattr(calign, config_name)
    values, script = {}, {}
    if args.config:
        values = read_config_file(args.config)
        script = split_script_settings(values, args.config)
        check_file_fields(config_class, values, args.config)
    for name, text in split_field_flags(field_tokens).items():
        values[name] = parse_field_value(config_class, name, text)
    if args.output_dir:
        values["output_dir"] = args.output_dir
    model = args.model or script.get("model_name_or_path")
    dataset = args.dataset or script.get("dataset_name")
    for value, what, key in ((model, "--model", "model_name_or_path"),
                             (dataset, "--dataset", "dataset_name")):
        if value is None:
            raise UsageError(f"{what} is required (or {key} in the --config file)")
    with inputs_checked():
        config = config_class(**values)
    for path, what, key in ((model, "--model", "model_name_or_path"),
                            (dataset, "--dataset", "dataset_name")):
        if not os.path.exists(path):
            source = what if path in (args.model, args.dataset) else f"{key} in {args.config}"
            raise UsageError(f"{source} {path!r} does not exist (calign reads local folders "
                             "and files)")
    kwargs = dict(args=config, train_dataset=dataset, eval_dataset=args.eval_dataset,
                  processing_class=args.tokenizer or (model if os.path.isfile(
                      os.path.join(model, "tokenizer.json")) else None))
    if args.method in WITH_REFERENCE and args.ref_model:
        kwargs["ref_model"] = args.ref_model
    if script.get("peft_config") is not None:
        kwargs["peft_config"] = script["peft_config"]
    with inputs_checked():
        trainer = getattr(calign, trainer_name)(model, **kwargs)
    trainer.train(resume_from_checkpoint=args.resume or None)
    final = os.path.join(config.output_dir, "final")
    trainer.save_model(final)
    last = [h for h in trainer.state.log_history if "loss" in h]
    if trainer.world.is_main:  # under mpirun, one line for the job
        print(f"trained {trainer.state.global_step} steps; last loss "
              f"{last[-1]['loss']:.4f}; model saved to {final}" if last else f"saved to {final}")
    return 0


# ---- generate and eval -------------------------------------------------------------------------

def load_tokenizer(path):
    if not os.path.isfile(os.path.join(path, "tokenizer.json")):
        raise UsageError(f"no tokenizer.json in {path!r}: pass --tokenizer")
    return calign.Tokenizer.from_pretrained(path)


def open_assistant(args):
    """The model, tokenizer and generation flags `generate` and `chat` answer with."""
    if not os.path.isdir(args.model):
        raise UsageError(f"--model {args.model!r} is not a folder")
    raw_text = getattr(args, "no_chat_template", False)
    if raw_text and args.chat_template is not None:
        raise UsageError("--chat_template cannot go with --no-chat-template")
    with inputs_checked():
        flags = chat.check_generation_flags({name: getattr(args, name)
                                             for name in chat.GENERATION_FLAGS})
        model = calign.Model.from_pretrained(args.model)
        tokenizer = load_tokenizer(args.tokenizer or args.model)
        assistant = chat.Assistant(model, tokenizer, flags, use_chat_template=not raw_text,
                                   chat_template=args.chat_template,
                                   weight_dtype=args.weight_dtype)
    if args.system is not None and not assistant.uses_chat_template:
        raise UsageError("--system needs the chat template, " + (
            "which --no-chat-template turns off" if raw_text else
            f"and the tokenizer of {args.tokenizer or args.model!r} has none"))
    return assistant


def command_generate(args):
    if args.urial:
        return command_generate_urial(args)
    assistant = open_assistant(args)
    with inputs_checked():
        prompt_ids = assistant.prompt_ids(chat.Conversation(args.system).asked(args.prompt))
        if args.show_prompt:
            print(assistant.show(prompt_ids), file=sys.stderr)
        outputs = assistant.generate(prompt_ids, seed=args.seed,
                                     num_return_sequences=args.num_return_sequences)
    for tokens in outputs:
        answer, warning = assistant.answer_text(tokens)
        if warning:
            chat.warn(warning)
        print(answer)
    return 0


def command_generate_urial(args):
    """`generate --urial`: a base model answers through URIAL's in-context
    prompt (raw text, no chat template), decoding until "# Query"."""
    from calign.decoding.urial import urial_generate, urial_prompt
    from calign.model.generation import resolve

    for flag, given in (("--system", args.system is not None),
                        ("--chat_template", args.chat_template is not None),
                        ("--num_return_sequences", args.num_return_sequences != 1)):
        if given:
            raise UsageError(f"{flag} cannot go with --urial (its prompt is raw text with its "
                             f"own system text; one answer a call)")
    args.no_chat_template = True
    assistant = open_assistant(args)
    with inputs_checked():
        prompt_ids = assistant.tokenizer.encode(urial_prompt(args.prompt))
        if args.show_prompt:
            print(assistant.show(prompt_ids), file=sys.stderr)
        argument, value = assistant.max_new_tokens(len(prompt_ids))
        settings, _ = resolve(dict(assistant.flags, max_new_tokens=argument,
                                   eos_token_id=assistant.eos),
                              assistant.model.generation_config)
        answer = urial_generate(assistant.model, assistant.tokenizer, args.prompt,
                                max_new_tokens=settings.pop("max_new_tokens"),
                                eos_token_id=settings.pop("eos_token_id"), seed=args.seed,
                                **settings)
    if not answer:
        chat.warn("the answer is empty: the model began the next '# Query' at once, or made "
                  "only special tokens or whitespace")
    print(answer)
    return 0


def command_chat(args):
    assistant = open_assistant(args)
    if not assistant.uses_chat_template:
        raise UsageError(f"the tokenizer of {args.tokenizer or args.model!r} has no chat "
                         f"template, which calign chat needs (calign generate --prompt sends "
                         f"raw text)")
    with inputs_checked():
        return chat.run_chat(assistant, chat.Conversation(args.system), seed=args.seed,
                             show_prompt=args.show_prompt,
                             banner=f"calign chat with {args.model}: ")


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


# ---- synthetic data -----------------------------------------------------------------------------

def command_synthesize(args):
    """`synthesize magpie`: SFT conversations (or, with --reward_model, DPO
    pairs of --k answers per instruction) written to --out; a summary of what
    was sampled and filtered goes to stderr."""
    from calign.synthetic import magpie

    if not os.path.isdir(args.model):
        raise UsageError(f"--model {args.model!r} is not a folder")
    if args.reward_model is not None and not os.path.isdir(args.reward_model):
        raise UsageError(f"--reward_model {args.reward_model!r} is not a folder")
    with inputs_checked():
        tokenizer = load_tokenizer(args.tokenizer or args.model)
        magpie.check_chat_tokenizer(f"the tokenizer of {args.tokenizer or args.model!r}",
                                    tokenizer)
        model = calign.Model.from_pretrained(args.model)
        filters = dict(min_instruction_chars=args.min_instruction_chars,
                       max_instruction_chars=args.max_instruction_chars,
                       min_response_chars=args.min_response_chars,
                       max_repetition=args.max_repetition,
                       drop_colon_endings=not args.keep_colon_endings,
                       dedup_threshold=None if args.dedup_threshold == 0 else
                       args.dedup_threshold)
        scorer = (calign.RewardModel.from_pretrained(args.reward_model)
                  if args.reward_model is not None else None)
        records, summary = magpie.magpie(
            model, tokenizer, args.n, turns=args.turns, system=args.system,
            max_instruction_tokens=args.max_instruction_tokens,
            max_response_tokens=args.max_response_tokens, early_stopping=not args.no_early_stopping,
            batch_size=args.batch_size, seed=args.seed, show_progress=True, **filters)
        if scorer is not None:
            instructions = [r["messages"][0]["content"] for r in records]
            if not instructions:
                raise UsageError("every sampled instruction was filtered out: no pair to build")
            records, pair_summary = magpie.preference_pairs(
                model, tokenizer, instructions, scorer, k=args.k,
                max_new_tokens=args.max_response_tokens, seed=args.seed, show_progress=True)
            summary["pairs"] = pair_summary
        magpie.write_jsonl(args.out, records)
    dropped = ", ".join(f"{name} {count}" for name, count in summary["dropped"].items() if count)
    print(f"sampled {summary['sampled']} instructions (stopping at the {summary['stops']}); "
          f"kept {summary['kept']}; dropped: {dropped or 'none'}", file=sys.stderr)
    if "pairs" in summary:
        print(f"preference pairs: {summary['pairs']['pairs']} of {summary['kept']} instructions "
              f"({summary['pairs']['ties']} with all {args.k} scores equal)", file=sys.stderr)
    print(f"wrote {len(records)} records to {args.out}", file=sys.stderr)
    return 0


def command_demo(args):
    from calign.demo.run import run

    run(args.output_dir, method=args.method, quick=args.quick, seed=args.seed)
    return 0


# ---- entry point -------------------------------------------------------------------------------

class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise UsageError(message)


def add_conversation_flags(parser):
    parser.add_argument("--tokenizer", help="tokenizer folder (default: the model's)")
    parser.add_argument("--system", help="a system message opening the conversation")
    parser.add_argument("--chat_template", metavar="NAME",
                        help="which of the tokenizer's named chat templates (default: "
                             "'default')")
    parser.add_argument("--show_prompt", action="store_true",
                        help="print each prompt as the model sees it (stderr)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the sampler")


def add_generation_flags(parser):
    """The settings of generation_config.json: None (not given) leaves the file's."""
    parser.add_argument("--max_new_tokens", type=int,
                        help=f"default: generation_config.json's (or the room its max_length "
                             f"leaves after the prompt), else {chat.DEFAULT_MAX_NEW_TOKENS}")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--do_sample", action="store_const", const=True, dest="do_sample",
                      help="sample (default: generation_config.json's do_sample, else greedy)")
    mode.add_argument("--greedy", action="store_const", const=False, dest="do_sample",
                      help="take the most likely token")
    parser.add_argument("--temperature", type=float)
    parser.add_argument("--top_k", type=int)
    parser.add_argument("--top_p", type=float)
    parser.add_argument("--repetition_penalty", type=float)
    parser.add_argument("--weight_dtype", choices=("float32", "bfloat16"), default="float32",
                        help="bfloat16: read the matrix weights rounded to bfloat16 (half the "
                             "bytes a decoding step reads; float32 arithmetic)")


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
    train.add_argument("--model", help="checkpoint folder (default: the config file's "
                                       "model_name_or_path)")
    train.add_argument("--dataset", help="JSON Lines file or folder (default: the config "
                                         "file's dataset_name)")
    train.add_argument("--eval_dataset")
    train.add_argument("--output_dir")
    train.add_argument("--config", help="YAML or JSON file of config fields (flags override); "
                                        "a recipe written for `trl dpo` etc. is taken")
    train.add_argument("--tokenizer", help="tokenizer folder (default: the model's)")
    train.add_argument("--ref_model", help="reference checkpoint (dpo, kto)")
    train.add_argument("--resume", help="checkpoint folder to resume from (default: the "
                                        "config's resume_from_checkpoint)")
    generate = commands.add_parser(
        "generate", help="answer a prompt (through the tokenizer's chat template)",
        description="Answers --prompt, put through the tokenizer's chat template when it has "
                    "one. Generation settings come from the checkpoint's "
                    "generation_config.json; a flag overrides the file. Without either, "
                    f"max_new_tokens is {chat.DEFAULT_MAX_NEW_TOKENS} and decoding greedy.")
    generate.add_argument("--model", required=True, help="checkpoint folder")
    generate.add_argument("--prompt", required=True, help="the user's message")
    add_conversation_flags(generate)
    generate.add_argument("--no-chat-template", "--no_chat_template", dest="no_chat_template",
                          action="store_true", help="send --prompt as raw text")
    add_generation_flags(generate)
    generate.add_argument("--num_return_sequences", type=int, default=1,
                          help="answers to sample (with --do_sample)")
    generate.add_argument("--urial", action="store_true",
                          help="answer through URIAL's in-context prompt (for a base model: "
                               "a system text and three stylistic examples, raw text, "
                               "decoding stops at '# Query')")
    chat_command = commands.add_parser(
        "chat", help="a conversation in the terminal",
        description=f"A multi-turn chat: each turn goes to the model with the whole "
                    f"conversation through the chat template. {chat.HELP}. Generation "
                    f"settings as for generate.")
    chat_command.add_argument("--model", required=True, help="checkpoint folder")
    add_conversation_flags(chat_command)
    add_generation_flags(chat_command)
    evaluate = commands.add_parser("eval", help="preference accuracy and margins")
    evaluate.add_argument("--model", required=True)
    evaluate.add_argument("--dataset", required=True)
    evaluate.add_argument("--ref_model")
    evaluate.add_argument("--tokenizer")
    evaluate.add_argument("--beta", type=float, default=0.1)
    evaluate.add_argument("--max_length", type=int, default=1024)
    evaluate.add_argument("--batch_size", type=int, default=8)
    demo = commands.add_parser("demo", help="SFT then a preference or online RL method on a "
                                            "bundled task")
    demo.add_argument("--method", choices=METHODS, default="dpo")
    demo.add_argument("--quick", action="store_true", help="fewer steps (for tests)")
    demo.add_argument("--output_dir", default="calign_demo")
    demo.add_argument("--seed", type=int, default=42, help="data order of both stages")
    synthesize = commands.add_parser(
        "synthesize", help="synthetic alignment data from a chat model (Magpie)",
        description="Magpie: the model samples user instructions from its chat template's "
                    "user header alone (temperature 1, top_p 1, stopping at the end of turn or "
                    "the first newline), answers them greedily, and the pairs are filtered; "
                    "with --reward_model, --k answers per kept instruction at temperature 0.8 "
                    "become chosen (best score) / rejected (worst) DPO records.")
    synthesize.add_argument("method", choices=["magpie"])
    synthesize.add_argument("--model", required=True, help="chat checkpoint folder")
    synthesize.add_argument("--tokenizer", help="tokenizer folder (default: the model's)")
    synthesize.add_argument("--n", type=int, default=1000, help="instructions to sample")
    synthesize.add_argument("--out", required=True, help="JSON Lines file to write")
    synthesize.add_argument("--turns", type=int, default=1, help="user/assistant turns")
    synthesize.add_argument("--system", help="a system message steering the instructions")
    synthesize.add_argument("--max_instruction_tokens", type=int, default=64)
    synthesize.add_argument("--max_response_tokens", type=int, default=256)
    synthesize.add_argument("--no_early_stopping", action="store_true",
                            help="do not stop an instruction at its first newline")
    synthesize.add_argument("--batch_size", type=int, default=50)
    synthesize.add_argument("--seed", type=int, default=0)
    synthesize.add_argument("--min_instruction_chars", type=int, default=1)
    synthesize.add_argument("--max_instruction_chars", type=int)
    synthesize.add_argument("--min_response_chars", type=int, default=1)
    synthesize.add_argument("--max_repetition", type=float,
                            help="drop answers whose repeated word 3-grams exceed this fraction")
    synthesize.add_argument("--keep_colon_endings", action="store_true",
                            help="keep instructions ending with ':' (dropped by default)")
    synthesize.add_argument("--dedup_threshold", type=float, default=0.9,
                            help="drop an instruction whose word 3-gram Jaccard similarity to "
                                 "a kept one reaches this (0: no deduplication)")
    synthesize.add_argument("--reward_model", help="reward model folder: write preference pairs")
    synthesize.add_argument("--k", type=int, default=5, help="answers per instruction (pairs)")
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
        if args.command == "chat":
            return command_chat(args)
        if args.command == "align":
            return command_align(args)
        if args.command == "demo":
            return command_demo(args)
        if args.command == "synthesize":
            return command_synthesize(args)
        return command_eval(args)
    except UsageError as exc:
        print(f"calign: error: {exc}", file=sys.stderr)
        return 2
