"""Text encoders (lesson 03): cache, MiniLM (embedded), open_clip loading code offline."""
import json

import pytest
import torch

from course_lib import config
from course_lib.text import (MiniLMEncoder, OpenCLIPTextEncoder, TextEncoder, TextEncoderError, get_text_encoder,
                             shared_encoder)


class CountingEncoder(TextEncoder):
    name, dim = "counting", 4

    def __init__(self, **kw):
        super().__init__(**kw)
        self.calls = []

    def _encode(self, texts):
        self.calls.append(list(texts))
        return torch.nn.functional.normalize(torch.stack([torch.tensor([len(t), t.count("a"), 1.0, 2.0]) for t in texts]), dim=-1)


def test_cache_in_memory():
    enc = CountingEncoder()
    e1 = enc.encode(["make it warmer", "make it cooler", "make it warmer"])
    assert e1.shape == (3, 4) and torch.equal(e1[0], e1[2])
    enc.encode(["make it cooler"])
    assert sum(len(c) for c in enc.calls) == 2 and enc.cache_size() == 2


def test_cache_on_disk(tmp_path):
    enc = CountingEncoder(disk_cache=True, cache_dir=tmp_path)
    e = enc.encode(["lift the shadows", "fade the photo"])
    assert enc.cache_path.is_file()
    again = CountingEncoder(disk_cache=True, cache_dir=tmp_path)
    assert torch.equal(again.encode(["fade the photo"]), e[1:])
    assert again.calls == []


def test_minilm_offline():
    with config.no_network():
        enc = shared_encoder("minilm")
        e = enc.encode(["make it warmer", "make it cooler", "boost the highlights"])
    assert e.shape == (3, 384) and isinstance(enc, MiniLMEncoder)
    assert torch.allclose(e.norm(dim=-1), torch.ones(3), atol=1e-4)
    assert (e[0] - e[1]).abs().max() > 1e-3
    # paraphrases are closer than different edits
    p = enc.encode(["warm up the photo", "crush the shadows"])
    assert (e[0] @ p[0]) > (e[0] @ p[1])


def test_auto_picks_embedded_without_hub_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    enc = get_text_encoder("auto")
    assert isinstance(enc, MiniLMEncoder) and enc.dim == 384
    with pytest.raises(ValueError):
        get_text_encoder("bert")


TINY = {"embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


def test_openclip_tiny_round_trip_offline(tmp_path):
    import open_clip
    from safetensors.torch import save_file

    cfg_file = tmp_path / "course-tiny-clip.json"
    cfg_file.write_text(json.dumps(TINY))
    open_clip.add_model_config(cfg_file)
    torch.manual_seed(0)
    with config.no_network():
        model = open_clip.create_model("course-tiny-clip", pretrained=None)
    folder = tmp_path / "tiny"
    folder.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / "open_clip_model.safetensors"))
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY}))
    texts = ["make it warmer", "lift the shadows"]
    tok = open_clip.get_tokenizer("course-tiny-clip")
    with torch.no_grad():
        ref = torch.nn.functional.normalize(model.encode_text(tok(texts)), dim=-1)
    with config.no_network():
        by_dir = OpenCLIPTextEncoder(f"local-dir:{folder}", pretrained=None)
        by_file = OpenCLIPTextEncoder("course-tiny-clip", pretrained=str(folder / "open_clip_model.safetensors"),
                                      config_file=cfg_file)
    assert by_dir.dim == 32 and by_dir.name.startswith("openclip")
    assert torch.allclose(by_dir.encode(texts), ref, atol=1e-5)
    assert torch.allclose(by_file.encode(texts), ref, atol=1e-5)


def test_openclip_missing_weights_is_one_line(tmp_path):
    with pytest.raises(TextEncoderError) as err:
        OpenCLIPTextEncoder("ViT-B-32", pretrained=str(tmp_path / "missing.safetensors"))
    assert "\n" not in str(err.value)
    with pytest.raises(TextEncoderError):
        OpenCLIPTextEncoder(f"local-dir:{tmp_path / 'nowhere'}", pretrained=None)


def test_paraphrase_neighbours_with_an_oracle_and_a_blind_encoder():
    """On the world's grammar: an encoder that knows each sentence's family and direction finds them
    all; one that sees every sentence alike finds almost none."""
    from course_lib.text import grammar_sentences, paraphrase_neighbours

    lookup = {t: (f, d) for w in ("train", "heldout_phrasing") for t, f, d in grammar_sentences(w)}
    keys = sorted(set(lookup.values()))

    class Oracle:
        """Knows which family and direction every sentence names (by looking them up)."""

        dim = len(keys)

        def encode(self, texts):
            out = torch.zeros(len(texts), self.dim)
            for i, t in enumerate(texts):
                out[i, keys.index(lookup[t])] = 1
            return out

    class Blind:
        dim = 4

        def encode(self, texts):
            return torch.ones(len(texts), self.dim)  # every sentence looks the same

    good = paraphrase_neighbours(Oracle())
    held = grammar_sentences("heldout_phrasing")
    # a few sentences are the same text in two families ("brighten the sky"): the look-up keeps one
    assert good["family"] >= 0.9 and good["family_direction"] >= 0.9 and good["n"] == len(held) > 40
    blind = paraphrase_neighbours(Blind())
    assert blind["family_direction"] < 0.1 and len(blind["misses"]) > 0.9 * blind["n"]
