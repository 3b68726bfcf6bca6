"""Builds the demo's assets: `python -m calign.demo.build [folder]` (seeded).

- a character-level tokenizer (tokenizers' WordLevel over digits, '+', '=',
  <pad>, <eos>) with tokenizer_config.json;
- a tiny Llama base model (2 layers, hidden 128, 0.43M parameters), randomly
  initialised as transformers does, in float32 safetensors;
- sft.jsonl: 6000 prompt/completion records whose demonstrations forget the
  carry in 70% of the sums that have one (a systematic mistake);
- preferences.jsonl: 3500 other problems, chosen = the right sum, rejected =
  the carry forgotten where there is a carry, else another plausible mistake;
- heldout.jsonl: 500 problems seen by neither.
"""

import json
import os
import sys

import numpy as np

from calign.demo import task

SEED = 0
FORGET_CARRY = 0.7
MODEL_CONFIG = dict(model_type="llama", architectures=["LlamaForCausalLM"], hidden_size=128,
                    num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                    intermediate_size=384, max_position_embeddings=16, initializer_range=0.02,
                    rms_norm_eps=1e-6, tie_word_embeddings=True, pad_token_id=0,
                    eos_token_id=1, rope_theta=10000.0, hidden_act="silu")


def has_carry(a, b):
    return (a % 10) + (b % 10) >= 10


def sft_records(pairs, rng):
    records = []
    for a, b in pairs:
        total = a + b
        if has_carry(a, b) and rng.random() < FORGET_CARRY:
            total -= 10
        records.append({"prompt": task.prompt_of(a, b), "completion": str(total)})
    return records


def preference_records(pairs, rng):
    return [{"prompt": task.prompt_of(a, b), "chosen": task.answer(a, b),
             "rejected": str(a + b - 10) if has_carry(a, b) else task.plausible_wrong(a, b, rng)}
            for a, b in pairs]


def write_jsonl(path, records):
    with open(path, "w") as f:
        for record in records:
            f.write(json.dumps(record) + "\n")


def build(folder):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers

    import calign

    os.makedirs(folder, exist_ok=True)
    vocab = {token: i for i, token in enumerate(task.SPECIAL + task.CHARACTERS)}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    backend.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    backend.decoder = decoders.Fuse()
    backend.add_special_tokens(task.SPECIAL)
    base = os.path.join(folder, "base")
    model = calign.Model.from_config(dict(MODEL_CONFIG, vocab_size=len(vocab)), seed=SEED)
    model.save_pretrained(base)
    backend.save(os.path.join(base, "tokenizer.json"))
    with open(os.path.join(base, "tokenizer_config.json"), "w") as f:
        json.dump({"eos_token": "<eos>", "pad_token": "<pad>",
                   "tokenizer_class": "PreTrainedTokenizerFast"}, f)
    rng = np.random.default_rng(SEED)
    heldout = task.problems(500, rng)
    train = task.problems(9500, rng, exclude=heldout)
    write_jsonl(os.path.join(folder, "sft.jsonl"), sft_records(train[:6000], rng))
    write_jsonl(os.path.join(folder, "preferences.jsonl"), preference_records(train[6000:], rng))
    write_jsonl(os.path.join(folder, "heldout.jsonl"),
                [{"prompt": task.prompt_of(a, b), "answer": task.answer(a, b)}
                 for a, b in heldout])


if __name__ == "__main__":
    build(sys.argv[1] if len(sys.argv) > 1 else os.path.join(os.path.dirname(__file__),
                                                              "assets"))
