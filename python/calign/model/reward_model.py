"""calign.RewardModel: a transformer backbone with a scalar head, saved as the
family's ...ForSequenceClassification so transformers loads it unchanged.

The reward of a sequence is the head applied to the final hidden state of its
last token that is not the pad token, the token transformers'
sequence-classification models read."""

import numpy as np

from calign.model import checkpoint
from calign.model.config import engine_config, load_config_file
from calign.model.dtypes import save_dtype
from calign.model.model import Model
from calign.model.packing import pack_shared_prefix

SEQUENCE_CLASSIFICATION = {"gpt2": "GPT2ForSequenceClassification",
                           "llama": "LlamaForSequenceClassification",
                           "qwen2": "Qwen2ForSequenceClassification",
                           "qwen3": "Qwen3ForSequenceClassification",
                           # Motif's modeling code (vLLM's port) names it so too
                           "motif": "MotifForSequenceClassification"}


class RewardModel(Model):
    """Model + `score.weight` [1, d]. The backbone's lm_head is not used."""

    def __init__(self, config):
        d = engine_config(config)["d_model"]
        # the language-model head is dropped: the engine ties it to the embedding
        super().__init__(config, extra_tensors={"score.weight": (1, d)},
                         engine_overrides={"tied_embeddings": 1})

    @classmethod
    def from_causal_lm(cls, path, seed=0, pad_token_id=None):
        """A reward model whose backbone is the causal LM in `path` and whose head
        is initialised as transformers does (N(0, initializer_range))."""
        config = load_config_file(path)
        model = cls(config)
        tensors = checkpoint.read_tensors(path)
        expected = {n: v.shape for n, v in model.state_dict().items() if n != "score.weight"}
        checkpoint.check_tensors(tensors, expected, ignored=("lm_head.weight",))
        checkpoint.copy_into({n: v for n, v in model.state_dict().items() if n != "score.weight"},
                             tensors)
        model.checkpoint_dtype = checkpoint.loaded_dtype(tensors, expected)
        std = float(config.get("initializer_range", 0.02))
        model.state_dict()["score.weight"][...] = np.random.default_rng(seed).normal(
            0.0, std, (1, model.hidden_size))
        if pad_token_id is not None:
            model.config["pad_token_id"] = int(pad_token_id)
        return model

    def save_pretrained(self, path, dtype=None):
        """Writes the family's ...ForSequenceClassification folder (num_labels 1)
        in `dtype` (see Model.save_pretrained; None: the dtype it was loaded
        in). No generation_config.json: a classifier does not generate, and
        transformers writes none for one."""
        dtype = save_dtype(dtype, self.checkpoint_dtype)
        config = dict(self.config)
        config.update(architectures=[SEQUENCE_CLASSIFICATION[config["model_type"]]],
                      num_labels=1, id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
        tensors = {n: v for n, v in self.state_dict().items() if n != "lm_head.weight"}
        checkpoint.write_checkpoint(path, tensors, config, dtype)

    @property
    def pad_token_id(self):
        pad = self.config.get("pad_token_id")
        return pad if isinstance(pad, int) else None

    def reward_rows(self, batch):
        """Row of each completion's reward token in a packed batch: its last token
        that is not the pad token (its last token if all are)."""
        rows = []
        ids = batch.input_ids
        for example in batch.completion_rows:
            for completion in example:
                row = completion[-1]
                if self.pad_token_id is not None:
                    while row > completion[0] and ids[row] == self.pad_token_id:
                        row -= 1
                rows.append(row)
        return np.asarray(rows, np.int64)

    def rewards_of(self, hidden, rows):
        """The head applied to the given rows of final hidden states (float64)."""
        return hidden[rows].astype(np.float64) @ self.state_dict()["score.weight"][0]

    def score(self, inputs, prompts=None, tokenizer=None):
        """Rewards float64 [N] of sequences: token-id lists, or strings with a
        tokenizer. With prompts, of prompt + completion pairs."""
        def ids(x):
            if isinstance(x, str):
                if tokenizer is None:
                    raise ValueError("scoring text needs tokenizer=")
                return tokenizer.encode(x)
            return list(x)

        input_ids = [ids(x) for x in inputs]
        prompt_ids = None if prompts is None else [ids(p) for p in prompts]
        if not input_ids:
            raise ValueError("inputs is empty")
        if prompt_ids is None:
            examples = [(seq[:1], [seq[1:] or seq[:1]]) for seq in input_ids]
        else:
            examples = [(p, [c]) for p, c in zip(prompt_ids, input_ids)]
        batch = pack_shared_prefix(examples)
        hidden = self.forward_packed(batch)
        return self.rewards_of(hidden, self.reward_rows(batch))
