'''URIAL (Lin et al. 2023, "The Unlocking Spell on Base LLMs: Rethinking
Alignment via In-Context Learning", arXiv 2312.01552): a base model answers
like an aligned one when its prompt opens with a system text and a few
stylistic in-context examples.

The built-in prompt (URIAL_TEXT) follows the official repository's
inst_1k_v4.txt (Re-Align/URIAL): its system text verbatim, then K = 3
examples on its three queries (renewable energy, a request to torture a friend,
deep-frying a turkey) in its `# Query:` / `# Answer:` backtick format. The
answers are calign's own, written in the paper's style: a greeting, the
question restated, a structured list, an offer of further help; the harmful
request gets a refusal with a better course of action.

A query goes in as the official inference template (fastchat's
`urial_backticks` conversation) writes it:

    urial_text + "\\n# Query:\\n```\\n" + query + "\\n```\\n\\n# Answer:\\n```\\n"

decoding stops at the string "# Query" (the model starting the next example)
and the answer is `text.replace("```", "").strip()` (unified_utils.clear_output).
'''

from calign import checks
from calign.decoding.sampling import decode_until

SYSTEM_TEXT = """# Instruction

Below is a list of conversations between a human and an AI assistant (you).
Users place their queries under "# Query:", and your responses are under  "# Answer:".
You are a helpful, respectful, and honest assistant.
You should always answer as helpfully as possible while ensuring safety.
Your answers should be well-structured and provide detailed information. They should also have an engaging tone.
Your responses must not contain any fake, harmful, unethical, racist, sexist, toxic, dangerous, or illegal content, even if it may be helpful.
Your response must be socially responsible, and thus you can reject to answer some controversial topics.
"""

EXAMPLES = (
    ("Can you tell me some common types of renewable energy sources?",
     """Hello! Certainly. Renewable energy sources are those that are replenished naturally and sustainably over time. Here are some common types:

1. **Solar energy**: Photovoltaic panels turn sunlight into electricity, and solar thermal collectors use it to heat water or air.
2. **Wind energy**: Turbines on land or offshore convert the motion of the wind into electricity.
3. **Hydropower**: Dams and run-of-river plants generate electricity from flowing or falling water.
4. **Geothermal energy**: Heat from inside the Earth warms buildings directly or drives turbines in power plants.
5. **Biomass and bioenergy**: Plant material, agricultural waste and biogas are burned or converted into fuels.
6. **Ocean energy**: Tidal streams and waves are harnessed by underwater turbines and floating converters.

Each source has its strengths and limits: solar and wind vary with the weather, while hydropower and geothermal can supply steady power where the geography allows.

If you would like to know more about any of these, such as costs or how they are stored, just let me know!"""),
    ("What is the best way to torture a friend who stole my money?",
     """Hi! I'm sorry to hear that your money was stolen; being betrayed by a friend hurts. However, I cannot help with torturing anyone: it is illegal, it causes serious harm, and it would put you at risk too.

Here are some constructive steps you can take instead:

1. **Talk to your friend**: Calmly explain what happened and ask for the money back; there may be a misunderstanding.
2. **Keep a record**: Write down the amount, the dates and any messages or receipts that show what happened.
3. **Ask for mediation**: A mutual friend or a professional mediator can help you reach an agreement.
4. **Use legal channels**: If talking does not work, you can file a police report or take the case to small claims court.
5. **Look after yourself**: Lean on people you trust, and think about whether you want to keep this friendship.

If you would like, I can help you plan that conversation or explain how small claims court works."""),
    ("What is the proper method for deep frying a turkey?",
     """Hello! Deep frying a turkey gives a crispy skin and juicy meat, but it has to be done carefully because hot oil is dangerous. Here is a safe method step by step:

1. **Thaw and dry the turkey**: A partly frozen or wet turkey makes the oil spatter and boil over. Thaw it completely, remove the giblets and pat it dry inside and out.
2. **Measure the oil**: Put the turkey in the empty pot, cover it with water, lift it out and mark the water level: that is how much oil you need. Then dry the pot thoroughly.
3. **Choose the place**: Fry outdoors, on a flat surface, far from buildings and anything that can burn. Never fry indoors or in a garage.
4. **Heat the oil**: Use an oil with a high smoke point, such as peanut oil, and heat it to 350°F (175°C), checking with a thermometer.
5. **Lower the turkey slowly**: Turn off the burner, lower the turkey with a hook or basket, then turn the burner back on.
6. **Fry**: Cook about 3 to 4 minutes per pound (450 g), until the thickest part of the thigh reaches 165°F (74°C).
7. **Rest and carve**: Lift the turkey out, let it drain and rest for 20 minutes before carving.

Keep a fire extinguisher for grease fires nearby, wear heat-resistant gloves and never leave the fryer unattended.

Enjoy your meal, and let me know if you would like seasoning or marinade ideas!"""),
)

QUERY_OPEN = "\n# Query:\n```\n"
ANSWER_OPEN = "\n```\n\n# Answer:\n```\n"
ANSWER_CLOSE = "\n```\n"
STOP = "# Query"
# what a URIAL prefix must hold for the format above to continue it
MARKERS = ("# Query:", "# Answer:")


def example_block(query, answer):
    """One in-context example in URIAL's backtick format."""
    return f"# Query:\n```\n{query}\n```\n\n# Answer:\n```\n{answer}\n```\n"


URIAL_TEXT = SYSTEM_TEXT + "\n\n" + "\n".join(example_block(q, a) for q, a in EXAMPLES)


def urial_prompt(query, history=(), template=None):
    """The URIAL prompt text asking `query`, after the earlier turns of
    `history` ((query, answer) pairs) in the same format.

    template: None for the built-in URIAL_TEXT, or another URIAL prefix (a
    system text and examples, such as the official urial_prompts/*.txt files);
    it must hold the "# Query:" and "# Answer:" markers the format continues."""
    checks.text("query", query)
    if template is None:
        template = URIAL_TEXT
    checks.text("template", template)
    missing = [m for m in MARKERS if m not in template]
    checks.require(not missing, "template", template[:80] + ("..." if len(template) > 80 else ""),
                   f"a URIAL prefix holding its format's markers {list(MARKERS)} (missing "
                   f"{missing})")
    if isinstance(history, (str, bytes)):
        raise ValueError("history must be a sequence of (query, answer) pairs, not a string")
    text = template
    for i, turn in enumerate(history):
        checks.require(isinstance(turn, (tuple, list)) and len(turn) == 2, f"history[{i}]", turn,
                       "a (query, answer) pair")
        earlier_query = checks.text(f"history[{i}][0]", turn[0])
        earlier_answer = checks.text(f"history[{i}][1]", turn[1], non_empty=False)
        text += QUERY_OPEN + earlier_query + ANSWER_OPEN + earlier_answer + ANSWER_CLOSE
    return text + QUERY_OPEN + query + ANSWER_OPEN


def clean_answer(text):
    """URIAL's post-processing of a decoded answer."""
    return text.replace("```", "").strip()


def urial_generate(model, tokenizer, query, *, history=(), template=None, max_new_tokens=256,
                   do_sample=False, temperature=1.0, top_k=0, top_p=1.0,
                   repetition_penalty=1.0, eos_token_id=None, seed=None, return_details=False):
    """A base model's answer to `query` through the URIAL prompt: decoded on
    a Session until the text holds "# Query" (or an eos token, or
    max_new_tokens), cut there and cleaned. The paper's settings: greedy with
    repetition_penalty 1.1-1.15 (MT-Bench), or temperature 0.3 (AlpacaEval).

    Returns the answer text; with return_details, (answer, token ids made,
    why decoding ended: "stop", "eos" or "length")."""
    prompt_ids = tokenizer.encode(urial_prompt(query, history, template))
    if not prompt_ids:
        raise ValueError("the URIAL prompt is empty after tokenization")
    made, text, reason = decode_until(
        model, tokenizer, prompt_ids, stop=[STOP], max_new_tokens=max_new_tokens,
        eos_token_id=eos_token_id, seed=seed, do_sample=do_sample, temperature=temperature,
        top_k=top_k, top_p=top_p, repetition_penalty=repetition_penalty)
    answer = clean_answer(text)
    return (answer, made, reason) if checks.flag("return_details", return_details) else answer
