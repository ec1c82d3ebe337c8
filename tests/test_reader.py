"""The student's reader (issue 37): held-out words stay out of its training, its results file, the
refusal that names close edits, and the studio's one-click alternatives."""
from __future__ import annotations

import dataclasses
import json
import sys

import numpy as np
import pytest
import torch

from course_lib import config, grammar, world
from course_lib.eval import reader as ER
from course_lib.student import Student, StudentConfig, featurise, interpret, read_metadata, shipped_path
from course_lib.train.reader import reader_bank_texts

RESULTS = config.SHIPPED_DIR / "results" / "reader.json"
SYN = set(grammar.HELDOUT_SYNONYMS)
SMALL = StudentConfig(net_size=32, grid_size=8, luma_bins=4, channels=16, fc=(32,), readout=world.READOUT_LABELS)


# ---------------------------------------------------------------- held-out words stay held out


def test_no_heldout_word_in_any_training_text_or_vocabulary_of_the_measured_reader():
    """The shipped reader (the one the results file measures): its word vocabulary, every text its
    training can draw (the world's training wording and the everyday wording) and a sample of its
    training bank hold no held-out synonym; no held-out phrasing pattern is an everyday one."""
    assert len(SYN) >= 40
    vocab = set(json.loads(read_metadata(shipped_path())["config"])["vocab"])
    assert not vocab & SYN, sorted(vocab & SYN)
    for text in grammar.reader_training_texts():
        assert not grammar.words(text) & SYN, text
    assert not grammar.reader_vocabulary() & SYN
    texts, _, _ = reader_bank_texts(3000, np.random.default_rng(0), everyday=0.5)
    for t in texts:
        assert not grammar.words(t) & SYN, t
    held = {p.text for f in grammar.WORDINGS for d in (1, -1) for p in grammar.patterns(f, d, "heldout_phrasing")}
    every = {p.text for f in grammar.EVERYDAY for d in (1, -1) for p in grammar.everyday_patterns(f, d)}
    assert not held & every
    assert not set(grammar.NON_EDITS_EVERYDAY) & set(grammar.NON_EDITS_HELDOUT)


def test_the_reader_wording_takes_no_word_off_the_heldout_list():
    """:data:`course_lib.grammar.HELDOUT_SYNONYMS` is computed (synonym words minus training words): a
    synonym added to the reader's everyday wording would leave the list, and the test above would not
    see it while the held-out sentences still use it. Every synonym word the world's grammar does not
    train on is on the list, and none of the reader's everyday words (patterns, objects, non-edits)."""
    syn_words = {w for t in grammar.synonym_texts() for w in grammar.words(t)}
    assert syn_words - grammar.training_vocabulary() == SYN
    assert not grammar.reader_vocabulary() & syn_words - grammar.training_vocabulary()
    for objs in (*grammar.EVERYDAY_OBJECTS.values(), *grammar.EVERYDAY_FAMILY_OBJECTS.values()):
        for o in objs:
            assert not grammar.words(o) & SYN, o


def test_the_check_above_sees_a_leaked_word(monkeypatch):
    """Adding a held-out word to the everyday wording would be caught."""
    leaked = dict(grammar.EVERYDAY, contrast=(grammar.EVERYDAY["contrast"][0] + ("make {obj} zippier",),
                                              grammar.EVERYDAY["contrast"][1]))
    monkeypatch.setattr(grammar, "EVERYDAY", leaked)
    grammar.everyday_patterns.cache_clear()
    try:
        assert any(grammar.words(t) & SYN for t in grammar.reader_training_texts())
    finally:
        grammar.everyday_patterns.cache_clear()


def test_everyday_tests_are_not_grammar_sentences():
    """The hand-written instructions are not the grammar's training sentences or non-edits."""
    train = set(grammar.NON_EDITS) | set(grammar.NON_EDITS_EVERYDAY)
    for t, alts in ER.EVERYDAY:
        assert t not in train and alts
        for alt in alts:
            for lab in alt:
                assert lab[-1] in "+-" and lab[:-1] in world.READOUT_LABELS, lab
    assert not set(ER.EVERYDAY_NON_EDITS) & train


# ---------------------------------------------------------------- scoring


def test_score_everyday_counts_exact_family_and_refusals():
    cases = (("a", (("exposure+",),)), ("b", (("hsl_saturation@reds+",), ("saturation+",))), ("c", (("tint-",),)))
    reads = [{("exposure", True)}, {("hsl_saturation@oranges", True)}, set()]
    s = ER.score_everyday(reads, cases)
    assert s["understood"] == pytest.approx(100 / 3) and s["family_direction"] == pytest.approx(200 / 3)
    assert s["refused"] == pytest.approx(100 / 3)


def test_word_vectors_and_the_second_reader_for_clauses_with_a_new_word():
    class Enc:
        dim = 4

        def encode(self, texts):
            return torch.nn.functional.normalize(torch.stack([torch.tensor([len(t), 1.0, t.count("e"), 0.5])
                                                              for t in texts]), dim=-1)

    # threshold above 1: the first reader reads nothing, so every clause with a new word goes to the second
    cfg = dataclasses.replace(SMALL, text_dim=4, film_reads="code", clauses=2, word_vectors=True, vocab=("sky", "warmer"),
                              readout_threshold=1.01)
    import course_lib.student as S

    old = S.shared_encoder
    S.shared_encoder = lambda name: Enc()
    try:
        x = featurise(["make the sky warmer, then the sky", "the it a", "make the heavens warmer"], cfg)
    finally:
        S.shared_encoder = old
    assert cfg.slot_dim == 4 + 2 + (4 + 1) + 1 and x.shape == (3, 2 * cfg.slot_dim)
    slots = x.reshape(3, 2, cfg.slot_dim)
    assert slots[0, 0, 4:6].tolist() == [1.0, 1.0] and slots[0, 1, 4:6].tolist() == [1.0, 0.0]
    assert slots[0, 0, 6:10].abs().sum() > 0 and slots[1, 0, 6:10].abs().sum() == 0  # stop words only: zeros
    assert slots[0, :, 10].tolist() == [0.0, 0.0] and slots[2, 0, 10] == 1.0  # "heavens" is new
    torch.manual_seed(0)
    m = Student(cfg).eval()
    assert m.text_mlp[1].in_features == 4 + 2 and m.text_mlp_b[1].in_features == 8
    with torch.no_grad():
        routed, a, b = m.understand(x), m.understand(x, "a"), m.understand(x, "b")
    assert torch.allclose(routed[0][0], a[0][0]) and torch.allclose(routed[0][2], b[0][2])
    assert not torch.allclose(routed[0][2], a[0][2])


# ---------------------------------------------------------------- refusal and the studio


def test_refusal_names_the_closest_edits():
    from course_lib.apps.retouch import EXAMPLES, refusal_message

    msg = refusal_message("bleach it", [{"instruction": "make it less saturated", "p": 0.2},
                                        {"instruction": "make it darker", "p": 0.001}])
    assert msg.startswith("error: no edit recognised") and '"make it less saturated"' in msg
    assert "make it darker" not in msg and "\n" not in msg
    assert all(x in refusal_message("xxxx", []) for x in EXAMPLES)


def test_interpret_applies_the_most_likely_edit_when_unsure():
    torch.manual_seed(0)
    m = Student(dataclasses.replace(SMALL, readout_threshold=0.999)).eval()
    seen = interpret(m, "make the sky warmer", unsure_factor=0.0)  # nothing reaches 0.999: unsure
    assert seen["unsure"] and len(seen["readings"]) == 1
    r = seen["readings"][0]
    assert seen["apply_text"] == grammar.example_instruction(r["family"], r["target"], r["strength"] >= 0)
    assert len(seen["alternatives"]) == 3 and all(a["instruction"] for a in seen["alternatives"])
    refused = interpret(m, "make the sky warmer", unsure_factor=2.0)
    assert not refused["readings"] and not refused["unsure"] and refused["alternatives"]


def test_example_instruction_is_read_by_the_grammar_words():
    for lab in world.READOUT_LABELS:
        fam, _, target = lab.partition("@")
        for pos in (True, False):
            text = grammar.example_instruction(fam, target, pos)
            assert grammar.words(text) <= grammar.training_vocabulary(), text


def test_studio_offers_close_readings_as_buttons(monkeypatch):
    pytest.importorskip("ipywidgets")
    from course_lib.apps import studio

    monkeypatch.setitem(sys.modules, "course_lib.inversion", None)  # as test_studio: no Inverse-and-Edit
    torch.manual_seed(0)
    m = Student(dataclasses.replace(SMALL, readout_threshold=0.9)).eval()  # untrained: p ~ 0.5, "not sure"
    app = studio.Studio(model=m, photo="chelsea")
    app.instruction.value = "make the sky warmer"
    buttons = [b for b in app.alternatives.children if hasattr(b, "on_click") and hasattr(b, "click")]
    assert buttons and "understood: " in app.understood.value
    buttons[0].click()
    assert app.instruction.value == buttons[0].description


# ---------------------------------------------------------------- the results file


def test_results_file_has_every_wording_kind_and_its_command():
    r = json.loads(RESULTS.read_text())
    assert r["command"].startswith("python -m course_lib.eval.reader")
    assert set(r["readers"]) >= {"before", "after"}
    for rep in r["readers"].values():
        assert set(rep["wordings"]) == set(grammar.WORDINGS_KINDS)
        for w in rep["wordings"].values():
            assert set(w) == {"understood", "family_direction", "refused"}
        assert 0 <= rep["non_edit_refusal"] <= 100 and rep["everyday"]
    after = r["readers"]["after"]
    # the results are the shipped reader's (same calibrated threshold)
    shipped = json.loads(read_metadata(shipped_path())["config"])
    assert after["threshold"] == pytest.approx(shipped["readout_threshold"])
    # the shipped student against the one it replaced: no wording kind read worse, and better at reading
    # held-out synonyms or at keeping region edits in place
    before = r["readers"]["before"]
    for w in grammar.WORDINGS_KINDS:
        assert after["wordings"][w]["family_direction"] >= before["wordings"][w]["family_direction"]
    assert "leak" in r and set(r["leak"]["students"]) >= {"before", "after"}
    leak = r["leak"]["students"]
    assert (after["wordings"]["heldout_synonym"]["family_direction"]
            > before["wordings"]["heldout_synonym"]["family_direction"]
            or leak["after"]["leak"] < leak["before"]["leak"])
    assert "| wording kind |" in ER.markdown(r)


def test_reader_only_with_a_second_reader_keeps_the_image_pathway(tmp_path):
    """``train-student --reader-only --word-vectors --everyday``: both readers train, the image weights
    stay, the recipe records the new settings and the second reader is used for clauses with a new word."""
    from course_lib.student import load_student, save_student
    from course_lib.train import student as TS

    cfg = dataclasses.replace(SMALL, film_reads="code", coords=True, vocab=tuple(sorted(grammar.training_vocabulary())))
    m = Student(cfg)
    src = save_student(m, tmp_path / "s.safetensors", metadata={"command": "x"})
    out = tmp_path / "r.safetensors"
    assert TS.main(["--init", str(src), "--reader-only", "--film-hidden", "32", "--text-pretrain-steps", "5",
                    "--text-bank", "40", "--clauses", "2", "--word-vectors", "--everyday", "0.5",
                    "--second-reader-steps", "5", "--out", str(out)]) == 0
    new = load_student(out)
    assert new.cfg.word_vectors and new.cfg.vocab == cfg.vocab and hasattr(new, "readout_head_b")
    for k, v in m.state_dict().items():
        if not k.startswith(("text_mlp", "readout_head")):
            assert torch.equal(v, new.state_dict()[k]), k
    settings = json.loads(read_metadata(out)["recipe"])["settings"]
    assert settings["word_vectors"] and settings["everyday"] == 0.5 and settings["second_reader_steps"] == 5
    x = new.embed(["make the sky warmer", "make the heavens toastier"])
    assert x.reshape(2, 2, -1)[:, 0, -2].tolist() == [0.0, 1.0]  # the new-word flag of the first clause
    with torch.no_grad():
        routed, a, b = new.understand(x), new.understand(x, "a"), new.understand(x, "b")
    assert torch.allclose(routed[0][0], a[0][0])  # no new word: the first reader
    blind = torch.sigmoid(a[0][1]).amax() < new.cfg.readout_threshold  # one clause: its reading is the whole's
    assert torch.allclose(routed[0][1], (b if blind else a)[0][1])


# ---------------------------------------------------------------- routing and the second reader's noise


def test_route_unsure_sends_a_new_word_clause_to_the_second_reader_unless_the_first_is_sure():
    from course_lib.student import SURE

    cfg = dataclasses.replace(SMALL, text_dim=4, film_reads="code", clauses=2, word_vectors=True, vocab=("sky", "warmer"),
                              readout_threshold=0.3, route="unsure")
    torch.manual_seed(0)
    m = Student(cfg).eval()
    D, V = 4, 2
    x = torch.randn(3, 2, cfg.slot_dim)
    x[..., -1] = 1.0  # two clauses each
    x[..., D + V + D] = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0]])  # new-word flags
    x = x.flatten(1)
    K = len(cfg.readout)
    with torch.no_grad():
        for bias, first_sure in ((8.0, True), (-0.5, False)):  # the first reader's presence ~1 (sure) or 0.38 (not)
            m.readout_head[-1].bias[:K] = bias
            m.readout_head[-1].weight.zero_()
            assert (torch.sigmoid(torch.tensor(bias)) >= SURE) == first_sure
            la, _ = m._read_clauses(x.reshape(3, 2, -1)[..., :-1], "a")
            lb, _ = m._read_clauses(x.reshape(3, 2, -1)[..., :-1], "b")
            routed, _ = m._read_clauses(x.reshape(3, 2, -1)[..., :-1])
            new = x.reshape(3, 2, -1)[..., D + V + D] > 0.5
            for b in range(3):
                for l in range(2):
                    want = lb if (new[b, l] and not first_sure) else la
                    assert torch.allclose(routed[b, l], want[b, l])
    with pytest.raises(ValueError):
        dataclasses.replace(cfg, route="sometimes")
    old = json.loads(cfg.to_json())
    del old["route"]
    assert StudentConfig.from_json(json.dumps(old)).route == "blind"  # checkpoints from before the field


def test_second_reader_noise_touches_only_the_embeddings_of_real_clauses():
    from course_lib.train.reader import second_reader_noise

    cfg = dataclasses.replace(SMALL, text_dim=4, film_reads="code", clauses=2, word_vectors=True, vocab=("sky", "warmer"))
    x = torch.rand(5, 2, cfg.slot_dim)
    x[:, 1] = 0.0  # an empty second slot
    x[:, 0, -1] = 1.0
    x = x.flatten(1)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(second_reader_noise(x, cfg, 0.0, g), x)
    y = second_reader_noise(x, cfg, 0.5, g).reshape(5, 2, -1)
    x3 = x.reshape(5, 2, -1)
    D, V = 4, 2
    assert not torch.allclose(y[:, 0, :D], x3[:, 0, :D]) and not torch.allclose(y[:, 0, D + V:2 * D + V], x3[:, 0, D + V:2 * D + V])
    assert torch.equal(y[:, 0, D:D + V], x3[:, 0, D:D + V]) and torch.equal(y[:, 0, 2 * D + V:], x3[:, 0, 2 * D + V:])
    assert torch.equal(y[:, 1], x3[:, 1])  # the empty slot stays empty


def test_second_margin_keeps_the_second_readers_labels_near_its_most_likely_one():
    cfg = dataclasses.replace(SMALL, text_dim=4, film_reads="code", clauses=2, word_vectors=True, vocab=("sky", "warmer"),
                              readout_threshold=1.01, route="blind")  # the first reader never reads: all new-word
    torch.manual_seed(0)                                                # clauses go to the second
    m = Student(cfg).eval()
    x = torch.randn(4, 2, cfg.slot_dim)
    x[..., 4 + 2 + 4] = 1.0  # every clause has a new word
    x = x[..., :-1]
    with torch.no_grad():
        full, _ = m._read_clauses(x)
        m.cfg.second_margin = 0.5
        cut, _ = m._read_clauses(x)
        b, _ = m._read_clauses(x, "b")  # training reads every label
    keep = full >= full.amax(-1, keepdim=True) - 0.5
    assert torch.equal(cut[keep], full[keep]) and (cut[~keep] <= -10).all() and torch.equal(b, full)
    assert keep.sum(-1).min() >= 1 and (~keep).any()
