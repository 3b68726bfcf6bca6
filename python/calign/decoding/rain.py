"""RAIN (Li et al., "RAIN: Your Language Models Can Align Themselves without
Finetuning", ICLR 2024, arXiv 2309.07124): a search over token sets in which
the model judges its own continuations and rewinds from harmful ones.

Each committed step runs searches on a tree whose nodes are token sets
(chunks) after the text so far. One search (the official code's `search`):

1. select from the root to a leaf by Eq. 1,
   argmax_X qh(X) + c * p(X) * sqrt(n(parent)) / (1 + n(X)), with q
   normalised over the tree, qh = (q - min q) / (max q - min q + 1e-5)
   (min, max start at -1, 1; qh = 0 while n(X) = 0) and c = 2;
2. evaluate the leaf: roll its text forward by sampling until a punctuation
   mark (, . ? : ; newline) or eos, then ask the model, with a harmlessness
   judge prompt, whether the response is harmless: twice, with the options'
   order swapped, s = ((A + B) / 2 - 0.5) * 2 in {-1, 0, 1};
3. expand the leaf (unless it ends the answer): token sets of 1, 2, 4, then
   10 tokens by depth; depth 0 the top-10 tokens, deeper the greedy
   continuation and up to 9 distinct samples from top-15 distributions,
   priors their normalised probabilities (0.75 p + 0.25 uniform at the root);
4. back up along the path: n += 1, q += (s - q) / n, an embedding's running
   mean, and the similarity update (Eq. 2) of the siblings X of each node Y
   on the path whose embeddings are close, s_xy = cos(e(X), e(Y)) >= 0.95:
   n(X) += gamma s_xy, q(X) = (q(X) n_before + gamma s_xy s) / n(X), gamma 0.2.

A step runs searches i in range(fn(root), max(50, fn(root) + 15)), ending
early once the most-visited root child has more than 6 real visits and
q > 0.8, as the official code (SafeAILab/RAIN, HH/main.py `gmeval`); then
the most-visited child (ties: larger q) is committed and becomes the root,
its children's priors smoothed 0.75/0.25 with the uniform again.

Deviations from the official code, on purpose:
- Embeddings are the model's own final hidden states, mean-pooled over the
  path's tokens and the rollout, not Sentence-BERT (all-MiniLM-L6-v2): no
  second model. The threshold 0.95 applies to them as it stands.
- The judge prompt is calign's own instruction (no few-shot examples), the
  paper's option blocks; the option letters are looked up in the
  tokenizer's vocabulary (the code hard-codes Llama's ids 29909, 29933).
- A candidate token set ends at an eos token; a rollout stops after
  max_rollout_tokens tokens; the code's dynamic node addition (checkadd)
  is not done.
Every move in the tree goes through one Session: the cursor slot is rewound
to the common prefix and only the rest is appended, so the prompt is
computed once; candidates, rollouts and the judge use slots of their own
(the judge's instruction is computed once too).
"""

import time

import numpy as np

from calign import checks
from calign.decoding.sampling import filtered_log_probs
from calign.decoding.session import Session

JUDGE_INSTRUCTION = (
    "Read the conversation between a human and an AI assistant below and decide whether the "
    "assistant's response is harmful or harmless. A response is harmful when it helps with "
    "violence, crime, weapons, abuse, self-harm, discrimination or other dangerous or "
    "unethical acts, or insults the human; it is harmless when it declines such requests or "
    "gives safe and helpful information.")
# the paper's option blocks (HH/r1.txt and r2.txt): A harmless first, then A harmful first
OPTIONS_HARMLESS_FIRST = ("Options:\n(A) Assistant's response is harmless.\n"
                          "(B) Assistant's response is harmful.\nThe answer is: (")
OPTIONS_HARMFUL_FIRST = ("Options:\n(A) Assistant's response is harmful.\n"
                         "(B) Assistant's response is harmless.\nThe answer is: (")
PUNCTUATION = (",", ".", "?", ":", ";", "\n")
NEW_TURN = "Human:"


class Node:
    """A token set in the search tree: prior p, visits n (fractional after
    similarity updates), real visits fn, value q, embedding (running mean
    over its evaluations, None before the first)."""

    def __init__(self, tokens, prior, parent=None, depth=0, hidden_sum=None):
        self.tokens = tuple(tokens)
        self.p = float(prior)
        self.parent = parent
        self.depth = depth            # the code's `step`: 1, 2, 4, 10-token sets by it
        self.children = []
        self.n = 0.0
        self.fn = 0
        self.q = 0.0
        self.embedding = None
        self.hidden_sum = hidden_sum  # sum of the hidden states of its own tokens

    def path(self):
        """The token sets from the root's child down to this node."""
        nodes, node = [], self
        while node.parent is not None:
            nodes.append(node)
            node = node.parent
        return nodes[::-1]


class Bounds:
    """The tree's min and max q for the normalisation of Eq. 1 (start -1, 1)."""

    def __init__(self):
        self.min_q, self.max_q = -1.0, 1.0

    def see(self, q):
        self.min_q, self.max_q = min(self.min_q, q), max(self.max_q, q)


def selection_score(child, parent_visits, bounds, c_puct):
    """Eq. 1 as the official code computes it (node.getqu)."""
    qh = 0.0 if child.n == 0 else (child.q - bounds.min_q) / (bounds.max_q - bounds.min_q + 1e-5)
    return qh + c_puct * child.p * np.sqrt(parent_visits) / (1.0 + child.n)


def select_child(node, bounds, c_puct=2.0):
    """The child maximising Eq. 1 (the first of equal ones)."""
    scores = [selection_score(c, node.n, bounds, c_puct) for c in node.children]
    return node.children[int(np.argmax(scores))]


def cosine(a, b):
    norm = np.linalg.norm(a) * np.linalg.norm(b)
    return float(a @ b / norm) if norm > 0 else 0.0


def backup(leaf, value, path_embeddings, bounds, *, similarity_gamma=0.2,
           similarity_threshold=0.95):
    """Backs a self-evaluation `value` up from `leaf` to the root (node.backup).

    path_embeddings[node]: the embedding of the text from the node's start to
    the end of the evaluated text, for each node below the root on the path.
    Each such node Y: n += 1, fn += 1, its embedding's running mean (over fn),
    then the similarity update (Eq. 2) of each sibling X with an embedding and
    s = cos(e(X), e(Y)) >= threshold: n(X) += gamma s, q(X) = (q(X) n_before +
    gamma s value) / n(X); then its own q += (value - q) / n. The root: n, fn, q."""
    node = leaf
    while node is not None:
        node.n += 1
        node.fn += 1
        if node.parent is not None:
            e = path_embeddings[node]
            node.embedding = e.copy() if node.embedding is None else \
                node.embedding + (e - node.embedding) / node.fn
            for sibling in node.parent.children:
                if sibling is node or sibling.embedding is None:
                    continue
                similarity = cosine(node.embedding, sibling.embedding)
                if similarity < similarity_threshold:
                    continue
                weight = similarity_gamma * similarity
                before = sibling.n
                sibling.n += weight
                sibling.q = (sibling.q * before + weight * value) / sibling.n
        node.q += (value - node.q) / node.n
        if node.parent is not None:
            bounds.see(node.q)
        node = node.parent


def most_visited(node):
    """The child with the most visits, ties to the larger q (the first of equal)."""
    top = max(c.n for c in node.children)
    tied = [c for c in node.children if c.n == top]
    return max(tied, key=lambda c: c.q)


def smoothed(priors, weight):
    """weight * p + (1 - weight) * uniform, normalised (the root's priors)."""
    p = weight * np.asarray(priors, np.float64) + (1.0 - weight) / len(priors)
    return p / p.sum()


class RainSearch:
    """The search state of one rain_generate call; see the module docstring."""

    def __init__(self, model, tokenizer, query, prompt_ids, settings, rng):
        self.model, self.tokenizer, self.query, self.s, self.rng = \
            model, tokenizer, query, settings, rng
        self.prompt_ids = list(prompt_ids)
        self.eos = settings["eos"]
        self.option_ids = judge_option_ids(tokenizer)
        judge_ids = tokenizer.encode(settings["judge_instruction"])
        self.options = [tokenizer.encode(OPTIONS_HARMLESS_FIRST, add_special_tokens=False),
                        tokenizer.encode(OPTIONS_HARMFUL_FIRST, add_special_tokens=False)]
        k = settings["n_candidates"]
        # slots: 0 cursor, 1..k candidates, k + 1 rollout, k + 2 judge prefix, k + 3/4 judge
        self.CURSOR, self.ROLLOUT, self.JUDGE = 0, k + 1, k + 2
        longest = max(settings["token_set_lengths"])
        room = (len(self.prompt_ids) + settings["max_new_tokens"] + longest +
                settings["max_rollout_tokens"])
        judge_room = len(judge_ids) + 2 * room + max(map(len, self.options)) + 16
        self.capacity = min(model.max_positions, max(room, judge_room))
        checks.require(room <= self.capacity, "max_new_tokens", settings["max_new_tokens"],
                       f"small enough for the prompt ({len(self.prompt_ids)} tokens), a token "
                       f"set and a rollout to fit the model's {model.max_positions} positions")
        self.session = Session(model, n_slots=k + 5, capacity=self.capacity)
        self.session.append(self.JUDGE, judge_ids)
        self.judge_prefix = len(judge_ids)
        self.cursor_tokens = []
        self.cursor_logits = None
        self.values = {}  # dialogue text -> self-evaluation, as the code's dic
        self.bounds = Bounds()
        self.evaluations = 0

    # ---- moving on the cache ------------------------------------------------

    def move_cursor(self, tokens):
        """Puts the cursor slot at `tokens` (rewinding to the common prefix and
        appending the rest); returns (logits after the last token, hidden
        states of the appended tokens)."""
        tokens = list(tokens)
        if tokens == self.cursor_tokens:
            return self.cursor_logits, None
        common = 0
        limit = min(len(tokens), len(self.cursor_tokens))
        while common < limit and tokens[common] == self.cursor_tokens[common]:
            common += 1
        common = min(common, len(tokens) - 1)
        self.session.truncate(self.CURSOR, common)
        logits, hidden = self.session.append(self.CURSOR, tokens[common:], return_hidden=True)
        self.cursor_tokens, self.cursor_logits = tokens, logits
        return logits, hidden

    def response_text(self, tokens):
        return self.tokenizer.decode(tokens[len(self.prompt_ids):], skip_special_tokens=True)

    # ---- the pieces of one search --------------------------------------------

    def candidates(self, logits, depth):
        """[(token set, prior, hidden sum)] after the cursor (logits after it)."""
        s = self.s
        length = s["token_set_lengths"][min(depth, len(s["token_set_lengths"]) - 1)]
        k = s["n_candidates"]
        if length == 1:  # the top-k tokens, priors renormalised over them
            log_probs = filtered_log_probs(logits, top_k=k)
            tokens = np.flatnonzero(np.isfinite(log_probs))
            tokens = tokens[np.argsort(-log_probs[tokens], kind="stable")][:k]
            sets = [[int(t)] for t in tokens]
            probs = np.exp(log_probs[tokens])
            hidden = self.extend_all(sets)
            return [(sets[i], probs[i], hidden[i]) for i in range(len(sets))]
        # greedy + (k - 1) sampled token sets, drawn in parallel slots
        slots = list(range(1, k + 1))
        for slot in slots:
            self.session.copy(self.CURSOR, slot)
        made = [[] for _ in slots]
        log_p = np.zeros(k)
        hidden_sum = [None] * k
        current = [logits] * k
        active = list(range(k))
        for step in range(length):
            chosen = []
            for j in active:
                lp = filtered_log_probs(current[j], top_k=s["top_k"])
                token = int(np.argmax(lp)) if j == 0 else \
                    int(self.rng.choice(lp.size, p=np.exp(lp) / np.exp(lp).sum()))
                made[j].append(token)
                log_p[j] += lp[token]
                chosen.append(token)
            out, hidden = self.session.append_batch([slots[j] for j in active],
                                                    [[t] for t in chosen], return_hidden=True)
            still = []
            for row, j in enumerate(active):
                current[j] = out[row]
                h = hidden[row].astype(np.float64)
                hidden_sum[j] = h if hidden_sum[j] is None else hidden_sum[j] + h
                if chosen[row] not in self.eos and step + 1 < length:
                    still.append(j)
            active = still
            if not active:
                break
        # the greedy set, then the distinct samples (the code's group_getp)
        kept, seen = [0], {tuple(made[0])}
        for j in range(1, k):
            if tuple(made[j]) not in seen:
                seen.add(tuple(made[j]))
                kept.append(j)
        probs = np.exp(log_p)
        if len(kept) > 1:  # the greedy set's prior, bounded as the code bounds it
            others = probs[kept[1:]]
            probs[0] = max(min(probs[0], others.sum()), others.max() + others.min())
        return [(made[j], probs[j], hidden_sum[j]) for j in kept]

    def extend_all(self, sets):
        """Hidden-state sums of one-token sets after the cursor, appended in parallel slots."""
        slots = list(range(1, len(sets) + 1))
        for slot in slots:
            self.session.copy(self.CURSOR, slot)
        _, hidden = self.session.append_batch(slots, sets, return_hidden=True)
        return [h.astype(np.float64) for h in hidden]

    def rollout(self, tokens, logits):
        """The leaf's text rolled forward by sampling to the next punctuation
        mark or eos: (its tokens after `tokens`, their hidden-state sum)."""
        self.session.copy(self.CURSOR, self.ROLLOUT)
        made, hidden_sum = [], None
        text = self.response_text(tokens)
        while (len(made) < self.s["max_rollout_tokens"] and not text.endswith(PUNCTUATION) and
               NEW_TURN not in text and not (made and made[-1] in self.eos) and
               len(tokens) + len(made) < self.capacity):
            lp = filtered_log_probs(logits)
            token = int(self.rng.choice(lp.size, p=np.exp(lp) / np.exp(lp).sum()))
            made.append(token)
            logits, hidden = self.session.append(self.ROLLOUT, [token], return_hidden=True)
            h = hidden[0].astype(np.float64)
            hidden_sum = h if hidden_sum is None else hidden_sum + h
            text = self.response_text(tokens + made)
        return made, hidden_sum, text

    def evaluate(self, response):
        """The judge's verdict on the dialogue, s in {-1, 0, 1} (cached by text)."""
        dialogue = f"Human: {self.query}\n\nAssistant: {response.strip()}"
        if dialogue in self.values:
            return self.values[dialogue]
        body = self.tokenizer.encode("\n\n" + dialogue + "\n", add_special_tokens=False)
        room = self.capacity - self.judge_prefix
        body = body[-(room - max(map(len, self.options))):]  # the end of a long dialogue
        a_slot, b_slot = self.JUDGE + 1, self.JUDGE + 2
        for slot in (a_slot, b_slot):
            self.session.copy(self.JUDGE, slot)
        logits = self.session.append_batch([a_slot, b_slot],
                                           [body + self.options[0], body + self.options[1]])
        a, b = self.option_ids
        harmless_first = 1 if logits[0][a] > logits[0][b] else 0  # A reads "harmless"
        harmless_second = 1 if logits[1][b] > logits[1][a] else 0  # B reads "harmless"
        value = ((harmless_first + harmless_second) / 2 - 0.5) * 2
        self.values[dialogue] = value
        self.evaluations += 1
        return value

    def is_terminal(self, node, tokens):
        return (bool(set(node.tokens) & self.eos) or
                len(tokens) - len(self.prompt_ids) >= self.s["max_new_tokens"] or
                NEW_TURN in self.response_text(tokens))

    def search(self, root, committed):
        """One inner-loop search from `root` (whose text is `committed`)."""
        node = root
        while node.children:
            node = select_child(node, self.bounds, self.s["c_puct"])
        path = node.path()
        tokens = committed + [t for n in path for t in n.tokens]
        logits, _ = self.move_cursor(tokens)
        rolled, rolled_hidden, text = self.rollout(tokens, logits)
        value = self.evaluate(text)
        if not self.is_terminal(node, tokens):
            found = self.candidates(logits, node.depth)
            priors = np.array([p for _, p, _ in found], np.float64)
            priors = priors / priors.sum()
            if node is root:
                priors = smoothed(priors, self.s["root_prior_weight"])
            node.children = [Node(t, p, node, node.depth + 1, h)
                             for (t, _, h), p in zip(found, priors)]
        # path embeddings: mean hidden state from each node's start to the rollout's end
        embeddings, total, count = {}, rolled_hidden, len(rolled)
        for n in reversed(path):
            total = n.hidden_sum if total is None else total + n.hidden_sum
            count += len(n.tokens)
            embeddings[n] = total / count
        backup(node, value, embeddings, self.bounds,
               similarity_gamma=self.s["similarity_gamma"],
               similarity_threshold=self.s["similarity_threshold"])


def judge_option_ids(tokenizer):
    """The ids of the option letters "A" and "B" in the tokenizer's vocabulary."""
    ids = [tokenizer.token_to_id(letter) for letter in ("A", "B")]
    checks.require(all(i is not None for i in ids), "tokenizer", tokenizer,
                   "a tokenizer whose vocabulary holds the tokens 'A' and 'B' (RAIN's judge "
                   "compares their probabilities)")
    return ids


def rain_generate(model, tokenizer, query, *, prompt=None, max_new_tokens=64, seed=0,
                  c_puct=2.0, token_set_lengths=(1, 2, 4, 10), n_candidates=10, top_k=15,
                  root_prior_weight=0.75, similarity_gamma=0.2, similarity_threshold=0.95,
                  min_visits=6, value_threshold=0.8, max_searches=50, min_searches=15,
                  max_rollout_tokens=32, eos_token_id=None, judge_instruction=JUDGE_INSTRUCTION,
                  return_details=False):
    """RAIN's answer to `query` (see the module docstring); the defaults are
    the paper's and the official code's.

    prompt: the text the model continues (default "Human: {query}\\n\\nAssistant:").
    eos_token_id: ends the answer (default: the tokenizer's eos token).
    seed: every draw comes from numpy.random.default_rng(seed): the same seed
        gives the same answer at any thread count.
    Returns the answer text; with return_details, a dict with the answer, its
    tokens, the searches run per committed step, the judge calls and seconds.
    """
    from calign.model.generation import eos_token_ids

    checks.text("query", query)
    prompt = f"Human: {query}\n\nAssistant:" if prompt is None else checks.text("prompt", prompt)
    lengths = tuple(token_set_lengths) if isinstance(token_set_lengths, (list, tuple)) else ()
    checks.require(len(lengths) > 0 and all(checks.is_int(v) and v >= 1 for v in lengths),
                   "token_set_lengths", token_set_lengths, "a non-empty list of integers >= 1")
    eos = eos_token_id if eos_token_id is not None else tokenizer.eos_token_id
    settings = dict(
        max_new_tokens=checks.integer("max_new_tokens", max_new_tokens, 1, checks.C_INT_MAX),
        c_puct=checks.real("c_puct", c_puct, 0.0),
        token_set_lengths=tuple(int(v) for v in lengths),
        n_candidates=checks.integer("n_candidates", n_candidates, 1, 1024),
        top_k=checks.integer("top_k", top_k, 1, checks.C_INT_MAX),
        root_prior_weight=checks.real("root_prior_weight", root_prior_weight, 0.0, 1.0),
        similarity_gamma=checks.real("similarity_gamma", similarity_gamma, 0.0),
        similarity_threshold=checks.real("similarity_threshold", similarity_threshold, -1.0,
                                         1.0),
        max_rollout_tokens=checks.integer("max_rollout_tokens", max_rollout_tokens, 0,
                                          checks.C_INT_MAX),
        judge_instruction=checks.text("judge_instruction", judge_instruction),
        eos=set(eos_token_ids("eos_token_id", eos)))
    min_visits = checks.real("min_visits", min_visits, 0.0)
    value_threshold = checks.real("value_threshold", value_threshold)
    max_searches = checks.integer("max_searches", max_searches, 1, checks.C_INT_MAX)
    min_searches = checks.integer("min_searches", min_searches, 1, checks.C_INT_MAX)
    rng = np.random.default_rng(checks.seed("seed", seed))
    prompt_ids = tokenizer.encode(prompt)
    checks.require(len(prompt_ids) > 0, "prompt", prompt, "a text that is not empty once encoded")

    started = time.perf_counter()
    search = RainSearch(model, tokenizer, query, prompt_ids, settings, rng)
    committed, root, searches = list(prompt_ids), Node((), 1.0), []
    search.move_cursor(committed)  # the prompt, computed once
    while True:
        first = root.fn
        runs = 0
        for _ in range(first, max(max_searches, first + min_searches)):
            search.search(root, committed)
            runs += 1
            if root.children:
                best = most_visited(root)
                if best.fn > min_visits and best.q > value_threshold:
                    break
        searches.append(runs)
        if not root.children:  # the root ends the answer
            break
        child = most_visited(root)
        committed = committed + list(child.tokens)
        child.parent = None
        if child.children:
            for c, p in zip(child.children, smoothed([c.p for c in child.children],
                                                     settings["root_prior_weight"])):
                c.p = p
        root = child
        if search.is_terminal(child, committed):
            break
    # the last token set may run past max_new_tokens (the code's maxlen check): cut it
    tokens = committed[len(prompt_ids):][:settings["max_new_tokens"]]
    text = search.response_text(list(prompt_ids) + tokens)
    cut = text.find(NEW_TURN)
    answer = (text if cut < 0 else text[:cut]).strip()
    if not checks.flag("return_details", return_details):
        return answer
    return dict(answer=answer, tokens=tokens, searches=searches,
                judge_calls=search.evaluations, seconds=time.perf_counter() - started)
