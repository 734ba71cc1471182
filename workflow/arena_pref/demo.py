"""Synthetic Chatbot Arena data in the exact Kaggle CSV format, for the CPU demo.

The rows reproduce the quirks of the Kaggle files (JSON lists of turns, several turns,
null turns, ``\\u`` escapes for non-ASCII text, lone surrogates, prompts shared by
several rows, random-looking ids) while the winner follows properties a small model can
learn from the first ~100 tokens of each answer:

* each answer comes from one of four generators of increasing quality: a refusal, an
  off-topic answer (about another topic), a short on-topic answer, a complete on-topic
  answer (several sentences, sometimes a list of key points);
* the better generator wins; equal quality (e.g. two refusals, or two near-identical
  answers) is a tie;
* then 15% of the labels are redrawn at random, as human votes are noisy.

Everything is drawn from one ``numpy.random.Generator(seed)``: the same arguments give
byte-identical files.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from . import LABELS
from . import io

# (name, keywords, facts): facts are on-topic sentences that use the keywords
TOPICS = (
    (
        "photosynthesis",
        ("chlorophyll", "sunlight", "glucose", "oxygen"),
        (
            "Photosynthesis lets plants turn sunlight, water and carbon dioxide into glucose.",
            "Chlorophyll in the leaves absorbs sunlight and powers the reaction.",
            "Oxygen is released as a by-product of photosynthesis.",
            "The glucose stores energy that the plant uses to grow.",
        ),
    ),
    (
        "black holes",
        ("gravity", "event horizon", "spacetime", "collapse"),
        (
            "A black hole is a region where gravity is so strong that light cannot escape.",
            "Its boundary is called the event horizon.",
            "Most black holes form from the collapse of a massive star.",
            "They bend spacetime strongly around them.",
        ),
    ),
    (
        "the French Revolution",
        ("1789", "Bastille", "monarchy", "république"),
        (
            "The French Revolution began in 1789 with the storming of the Bastille.",
            "It ended the absolute monarchy of Louis XVI.",
            "It proclaimed the first French république in 1792.",
            "Its ideals were liberté, égalité and fraternité.",
        ),
    ),
    (
        "machine learning",
        ("data", "model", "training", "prediction"),
        (
            "Machine learning builds a model that learns patterns from data.",
            "During training the model adjusts its parameters to reduce errors.",
            "The trained model then makes a prediction on new data.",
            "Common examples are spam filters and recommendation systems.",
        ),
    ),
    (
        "crème brûlée",
        ("custard", "caramelised sugar", "vanilla", "ramekin"),
        (
            "Crème brûlée is a vanilla custard topped with a layer of caramelised sugar.",
            "The custard is baked gently in a ramekin set in a water bath.",
            "The sugar is caramelised with a torch just before serving.",
            "It should be chilled so the custard sets firmly.",
        ),
    ),
    (
        "the water cycle",
        ("evaporation", "condensation", "precipitation", "clouds"),
        (
            "The water cycle moves water between the oceans, the air and the land.",
            "Evaporation turns water into vapour when the sun heats it.",
            "Condensation forms clouds as the vapour cools.",
            "Precipitation returns the water as rain or snow.",
        ),
    ),
    (
        "Python lists",
        ("append", "index", "slicing", "mutable"),
        (
            "A Python list is a mutable sequence that can hold items of any type.",
            "You add an item with append and read one by its index.",
            "Slicing such as items[1:3] returns a new list.",
            "Lists keep the order in which items were inserted.",
        ),
    ),
    (
        "the Japanese tea ceremony (茶道)",
        ("matcha", "chasen", "hospitality", "ritual"),
        (
            "The Japanese tea ceremony, or 茶道, is a ritual of preparing matcha for guests.",
            "The host whisks the matcha with a bamboo chasen.",
            "Every gesture expresses hospitality and respect.",
            "The ritual values calm, simplicity and attention to the moment.",
        ),
    ),
    (
        "vaccines",
        ("immune system", "antibodies", "antigen", "immunity"),
        (
            "A vaccine trains the immune system to recognise a germ without causing disease.",
            "It shows the body a harmless antigen from the germ.",
            "The body responds by making antibodies and memory cells.",
            "This immunity protects you if you meet the real germ later.",
        ),
    ),
    (
        "compound interest",
        ("principal", "interest rate", "growth", "reinvest"),
        (
            "Compound interest means you earn interest on the principal and on past interest.",
            "When you reinvest the interest, growth speeds up over time.",
            "A higher interest rate or a longer period gives much faster growth.",
            "The rule of 72 estimates how long money takes to double.",
        ),
    ),
    (
        "plate tectonics",
        ("crust", "plates", "earthquakes", "mantle"),
        (
            "Plate tectonics says the Earth's crust is split into moving plates.",
            "The plates float on the hot, slowly flowing mantle.",
            "Earthquakes and volcanoes happen mostly where plates meet.",
            "Mountains such as the Himalayas form when plates collide.",
        ),
    ),
    (
        "the Roman Empire",
        ("Augustus", "legions", "Rome", "aqueducts"),
        (
            "The Roman Empire was ruled from Rome, starting with Augustus in 27 BC.",
            "Its legions controlled lands around the whole Mediterranean.",
            "Romans built roads and aqueducts that still stand today.",
            "The western empire fell in 476 AD.",
        ),
    ),
    (
        "SQL joins",
        ("tables", "INNER JOIN", "LEFT JOIN", "keys"),
        (
            "A SQL join combines rows from two tables using matching keys.",
            "An INNER JOIN keeps only the rows that match in both tables.",
            "A LEFT JOIN keeps every row of the left table, matched or not.",
            "Indexes on the join keys make joins much faster.",
        ),
    ),
    (
        "sleep",
        ("REM", "circadian rhythm", "memory", "hours"),
        (
            "Sleep lets the body and brain recover and consolidate memory.",
            "Adults usually need seven to nine hours a night.",
            "Sleep cycles through light, deep and REM stages.",
            "A steady circadian rhythm makes falling asleep easier.",
        ),
    ),
    (
        "the Great Wall of China (长城)",
        ("Ming dynasty", "defence", "bricks", "kilometres"),
        (
            "The Great Wall of China, 长城, was built for defence against northern raids.",
            "Most of the wall that stands today dates from the Ming dynasty.",
            "It is made of stone, earth and bricks.",
            "With all its branches it runs for thousands of kilometres.",
        ),
    ),
    (
        "climate change",
        ("greenhouse gases", "carbon dioxide", "warming", "emissions"),
        (
            "Climate change is the long-term warming of the planet.",
            "It is driven by greenhouse gases such as carbon dioxide from burning fuels.",
            "Warming raises sea levels and makes heatwaves more frequent.",
            "Cutting emissions is the main way to slow it down.",
        ),
    ),
    (
        "git branches",
        ("commit", "merge", "branch", "checkout"),
        (
            "A git branch is a movable pointer to a commit.",
            "You create a branch to work on a change without touching main.",
            "Use checkout or switch to move between branches.",
            "When the work is done you merge the branch back.",
        ),
    ),
    (
        "the human heart",
        ("ventricles", "atria", "blood", "valves"),
        (
            "The human heart is a muscle that pumps blood through the body.",
            "It has two atria on top and two ventricles below.",
            "Valves keep the blood flowing in one direction.",
            "It beats about 100,000 times a day.",
        ),
    ),
    (
        "supply and demand",
        ("price", "market", "equilibrium", "shortage"),
        (
            "Supply and demand explain how a market sets a price.",
            "When demand rises and supply stays the same, the price goes up.",
            "The equilibrium price is where supply equals demand.",
            "A price held below equilibrium causes a shortage.",
        ),
    ),
    (
        "the Mona Lisa",
        ("Leonardo da Vinci", "Louvre", "portrait", "sfumato"),
        (
            "The Mona Lisa is a portrait painted by Leonardo da Vinci.",
            "It hangs in the Louvre in Paris.",
            "Leonardo used sfumato, soft blending without sharp outlines.",
            "The portrait is famous for its mysterious smile.",
        ),
    ),
    (
        "recursion",
        ("base case", "function", "call stack", "recursive"),
        (
            "Recursion is when a function calls itself to solve a smaller problem.",
            "Every recursive function needs a base case that stops the calls.",
            "Each call is kept on the call stack until it returns.",
            "Factorial and tree traversal are classic recursive examples.",
        ),
    ),
    (
        "volcanoes",
        ("magma", "lava", "eruption", "ash"),
        (
            "A volcano is an opening where magma from inside the Earth reaches the surface.",
            "Once magma erupts it is called lava.",
            "An eruption can throw out ash, gas and rock.",
            "Many volcanoes sit where tectonic plates meet.",
        ),
    ),
    (
        "São Paulo",
        ("Brazil", "metropolis", "Avenida Paulista", "coffee"),
        (
            "São Paulo is the largest city of Brazil and a huge metropolis.",
            "It grew rich from the coffee trade in the nineteenth century.",
            "Avenida Paulista is its best-known avenue.",
            "It is famous for its food, museums and nightlife.",
        ),
    ),
    (
        "electric cars",
        ("battery", "charging", "range", "motor"),
        (
            "Electric cars use an electric motor powered by a battery.",
            "You recharge the battery at home or at a charging station.",
            "Range is how far the car can drive on one charge.",
            "They produce no exhaust emissions while driving.",
        ),
    ),
    (
        "the Pythagorean theorem",
        ("right triangle", "hypotenuse", "a² + b² = c²", "sides"),
        (
            "The Pythagorean theorem applies to every right triangle.",
            "It states that a² + b² = c², where c is the hypotenuse.",
            "The hypotenuse is the side opposite the right angle.",
            "It lets you find one side when you know the other two sides.",
        ),
    ),
    (
        "DNA",
        ("genes", "double helix", "bases", "chromosomes"),
        (
            "DNA is the molecule that carries genetic information.",
            "It has the shape of a double helix.",
            "Its four bases, A, T, C and G, spell out genes.",
            "DNA is packed into chromosomes inside the cell nucleus.",
        ),
    ),
    (
        "meditation",
        ("breathing", "attention", "stress", "mindfulness"),
        (
            "Meditation trains attention, often by focusing on your breathing.",
            "Mindfulness meditation means noticing thoughts without judging them.",
            "Regular practice can reduce stress and improve sleep.",
            "Ten minutes a day is a good way to start.",
        ),
    ),
    (
        "the Internet",
        ("packets", "TCP/IP", "routers", "network"),
        (
            "The Internet is a global network of connected computers.",
            "Data travels in small packets using the TCP/IP protocols.",
            "Routers forward the packets towards their destination.",
            "The web is one service that runs on top of the Internet.",
        ),
    ),
    (
        "Beethoven",
        ("symphonies", "composer", "deafness", "Für Elise"),
        (
            "Beethoven was a German composer born in Bonn in 1770.",
            "He wrote nine symphonies, including the famous Ninth.",
            "He kept composing even after his deafness became total.",
            "Für Elise is one of his best-known piano pieces.",
        ),
    ),
    (
        "baking bread",
        ("yeast", "flour", "dough", "kneading"),
        (
            "Baking bread starts with a dough of flour, water, salt and yeast.",
            "Kneading the dough develops gluten so the bread holds its shape.",
            "The yeast makes the dough rise by producing gas.",
            "Bake it in a hot oven until the crust is golden.",
        ),
    ),
)

PHRASINGS = (
    "Can you explain {}?",
    "What is {} and why does it matter?",
    "Give me a short overview of {}.",
    "How does {} work?",
    "Write a few sentences about {}.",
    "I'm curious about {}. What should I know?",
    "Tell me the key facts about {}.",
    "Explain {} to a beginner.",
)
CONTEXTS = (
    "",
    " I'm a student.",
    " Please be brief.",
    " I have an exam tomorrow.",
    " Explain it like I'm five.",
    " Merci d'avance !",
    " Thanks!",
    " I'm writing a blog post.",
    " Use simple words.",
    " My friend asked me and I didn't know.",
    " 🙏",
    " Danke schön.",
)
FOLLOW_UPS = (
    "Can you give an example?",
    "Can you say more about {}?",
    "Thanks! Anything else I should know?",
    "Summarise that in one sentence.",
    "Why is {} important here?",
)
REFUSALS = (
    "I'm sorry, but I can't help with that.",
    "I'm sorry, but I cannot assist with that request.",
    "As an AI language model, I can't provide that information.",
    "I apologize, but I am unable to answer this question.",
)
OPENERS = ("", "", "Sure! ", "Great question! ", "Certainly. ", "Of course. ")
EMOJI = ("😊", "🚀", "👍", "✨", "📚")
MODELS = (
    "gpt-4-0613",
    "gpt-4-1106-preview",
    "gpt-3.5-turbo-0613",
    "claude-2.1",
    "claude-instant-1",
    "llama-2-13b-chat",
    "llama-2-70b-chat",
    "mixtral-8x7b-instruct-v0.1",
    "vicuna-13b",
    "gemini-pro",
)

# Answer generators by increasing quality; the weights are how often each is drawn.
GENERATORS = ("refusal", "off_topic", "short", "complete")
GENERATOR_WEIGHTS = np.array([0.15, 0.20, 0.30, 0.35])
NEAR_DUPLICATE = 0.06  # share of rows whose two answers are near-identical (a tie)
LABEL_NOISE = 0.15  # share of labels redrawn uniformly at random
SHARED_PROMPT = 0.10  # rows reusing an earlier row's prompt (so ~20% share one)
NULL_TURN = 0.03  # share of response turns that are null
EMOJI_RATE = 0.06  # share of answer turns ending with an emoji
LONE_SURROGATE = 0.01  # share of rows with an emoji cut in half (a lone surrogate)
TURN_COUNTS, TURN_WEIGHTS = (1, 2, 3), (0.8, 0.15, 0.05)
ID_RANGE = (10_000, 4_294_967_295)  # Kaggle ids are unsigned 32-bit ints


def make_demo_data(n_train, n_test, seed):
    """Return ``(train_df, test_df)`` with cells exactly as in the Kaggle CSVs."""
    rng = np.random.default_rng(seed)
    n = n_train + n_test
    # sorted within each split, as in the Kaggle files
    ids = rng.choice(ID_RANGE[1] - ID_RANGE[0], size=n, replace=False) + ID_RANGE[0]
    ids = np.concatenate([np.sort(ids[:n_train]), np.sort(ids[n_train:])])

    rows, seen = [], set()
    for i in range(n):
        if i and rng.random() < SHARED_PROMPT:
            shared = rows[rng.integers(i)]
            topic, prompt = shared["topic"], shared["prompt"]
        else:
            topic, prompt = _new_prompt(rng, seen)
        rows.append(
            {
                "id": int(ids[i]),
                "topic": topic,
                "prompt": prompt,
                **_answers_and_label(rng, topic, len(prompt)),
            }
        )

    train = pd.DataFrame(
        {
            "id": [r["id"] for r in rows[:n_train]],
            "model_a": [r["model_a"] for r in rows[:n_train]],
            "model_b": [r["model_b"] for r in rows[:n_train]],
            **_turn_cells(rows[:n_train]),
            **{
                col: [int(r["label"] == k) for r in rows[:n_train]]
                for k, col in enumerate(LABELS)
            },
        }
    )
    test = pd.DataFrame(
        {"id": [r["id"] for r in rows[n_train:]], **_turn_cells(rows[n_train:])}
    )
    return train, test


def write_demo_csvs(train_path, test_path, n_train, n_test, seed):
    """Write the demo train and test CSVs (atomically)."""
    train, test = make_demo_data(n_train, n_test, seed)
    io.write_csv(train, train_path)
    io.write_csv(test, test_path)


def _pick(rng, seq):
    return seq[rng.integers(len(seq))]


def _new_prompt(rng, seen):
    """A prompt (list of turns) not used before, unless the space of prompts runs out."""
    for _ in range(50):
        topic = _pick(rng, TOPICS)
        turns = [_pick(rng, PHRASINGS).format(topic[0]) + _pick(rng, CONTEXTS)]
        n_turns = TURN_COUNTS[rng.choice(len(TURN_COUNTS), p=TURN_WEIGHTS)]
        turns += [
            _pick(rng, FOLLOW_UPS).format(_pick(rng, topic[1]))
            for _ in range(n_turns - 1)
        ]
        if tuple(turns) not in seen:
            break
    seen.add(tuple(turns))
    return topic, turns


def _answers_and_label(rng, topic, n_turns):
    models = rng.choice(len(MODELS), size=2, replace=False)
    if rng.random() < NEAR_DUPLICATE:
        gen_a = gen_b = GENERATORS[rng.choice(len(GENERATORS), p=GENERATOR_WEIGHTS)]
        answer_a = _answer(rng, gen_a, topic, n_turns)
        answer_b = [_perturb(rng, t) for t in answer_a]
    else:
        gen_a, gen_b = (
            GENERATORS[g]
            for g in rng.choice(len(GENERATORS), size=2, p=GENERATOR_WEIGHTS)
        )
        answer_a = _answer(rng, gen_a, topic, n_turns)
        answer_b = _answer(rng, gen_b, topic, n_turns)
    quality_a, quality_b = GENERATORS.index(gen_a), GENERATORS.index(gen_b)
    label = 0 if quality_a > quality_b else 1 if quality_b > quality_a else 2
    if rng.random() < LABEL_NOISE:
        label = int(rng.integers(3))

    if rng.random() < LONE_SURROGATE:
        answer = _pick(rng, (answer_a, answer_b))
        k = rng.integers(n_turns)
        # the high half of an emoji whose low half was cut off, as in the Kaggle data
        answer[k] += " \ud83d"
    answer_a, answer_b = _quirks(rng, answer_a), _quirks(rng, answer_b)
    return {
        "model_a": MODELS[models[0]],
        "model_b": MODELS[models[1]],
        "response_a": answer_a,
        "response_b": answer_b,
        "label": label,
    }


def _answer(rng, generator, topic, n_turns):
    """One answer turn per prompt turn, all from the same generator."""
    if generator == "refusal":
        return [_pick(rng, REFUSALS) for _ in range(n_turns)]
    if generator == "off_topic":
        other = _pick(rng, [t for t in TOPICS if t is not topic])
        form = _pick(rng, ("short", "complete"))
        return [_on_topic(rng, form, other) for _ in range(n_turns)]
    return [_on_topic(rng, generator, topic) for _ in range(n_turns)]


def _on_topic(rng, form, topic):
    _, keywords, facts = topic
    order = rng.permutation(len(facts))
    opener = _pick(rng, OPENERS)
    if form == "short":
        return opener + facts[order[0]]
    # complete: the definition first so the topic shows within the first tokens
    body = " ".join(facts[k] for k in [0, *[k for k in order if k != 0][:2]])
    if rng.random() < 0.5:
        body += "\n\nKey points:\n" + "\n".join(f"- {kw}" for kw in keywords[:3])
    return opener + body


def _perturb(rng, text):
    """A near-identical copy of ``text``: one small change of wording or punctuation."""
    change = rng.integers(3)
    if change == 0:
        return (
            "Sure! " + text if not text.startswith("Sure! ") else text[len("Sure! ") :]
        )
    if change == 1:
        return text[:-1] + "!" if text.endswith(".") else text + "."
    return (
        text.replace(" and ", " & ", 1)
        if " and " in text
        else text + " Hope this helps."
    )


def _quirks(rng, answer):
    """Sprinkle null turns and trailing emoji over an answer (a list of turns)."""
    out = []
    for turn in answer:
        if rng.random() < NULL_TURN:
            out.append(None)
        elif rng.random() < EMOJI_RATE:
            out.append(f"{turn} {_pick(rng, EMOJI)}")
        else:
            out.append(turn)
    return out


def _turn_cells(rows):
    # ensure_ascii=True writes non-ASCII text as \u escapes (astral characters as
    # surrogate pairs), exactly as the Kaggle CSVs do
    return {
        col: [json.dumps(r[col], ensure_ascii=True) for r in rows]
        for col in ("prompt", "response_a", "response_b")
    }
