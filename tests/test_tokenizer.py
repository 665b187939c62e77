"""Chapter 2: vocabulary, word tokenizer, and the language-modeling windows."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from lmtut import (
    LanguageModelingDataLayer,
    LanguageModelingDataset,
    VocabError,
    WordTokenizer,
    build_vocab,
    prepare_corpus,
)
from lmtut.model import round_up
from lmtut.tokenizer import write_vocab


@pytest.fixture(scope="module")
def desc(wikitext2_dir):
    return prepare_corpus(wikitext2_dir, do_lower_case=False)


@pytest.fixture(scope="module")
def tokenizer(desc):
    return WordTokenizer(desc.vocab_file)


@pytest.fixture
def tiny_tokenizer(tmp_path):
    path = write_vocab(
        build_vocab(Counter("a b b c c c".split())), tmp_path / "vocab.txt"
    )
    return WordTokenizer(path)


def test_build_vocab_specials_first_then_by_frequency_ties_sorted():
    vocab = build_vocab(Counter({"b": 2, "a": 2, "c": 5, "<unk>": 9, "rare": 1}))
    assert vocab == ["<pad>", "<bos>", "<eos>", "<unk>", "c", "a", "b", "rare"]
    assert build_vocab(Counter({"b": 2, "rare": 1}), min_freq=2)[4:] == ["b"]


def test_wikitext2_vocabulary(desc, tokenizer):
    # 33,278 types counting <unk> and <eos>, plus <pad> and <bos>.
    assert desc.vocab_size == tokenizer.vocab_size == 33_280
    assert (tokenizer.pad_id, tokenizer.bos_id, tokenizer.eos_id, tokenizer.unk_id) == (
        0,
        1,
        2,
        3,
    )
    assert tokenizer.id_to_token[4:8] == ["the", ",", ".", "of"]
    assert [round_up(tokenizer.vocab_size, m) for m in (8, 64, 128, 1024)] == [
        33_280,
        33_280,
        33_280,
        33_792,
    ]
    first = desc.vocab_file.read_bytes()
    prepare_corpus(desc.data_dir)  # deterministic: the same file again
    assert desc.vocab_file.read_bytes() == first


def test_lower_case_vocabulary_is_smaller_and_lower(wikitext2_dir):
    lower = prepare_corpus(wikitext2_dir, do_lower_case=True)
    assert (
        lower.train_file.name == "train.lower.txt"
        and lower.vocab_file.name == "vocab.lower.txt"
    )
    words = WordTokenizer(lower.vocab_file).id_to_token
    assert 20_000 < lower.vocab_size < 33_280 and all(w == w.lower() for w in words)


def test_round_trip_on_real_sentences(desc, tokenizer):
    lines = [
        line
        for line in desc.test_file.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ][:200]
    for line in lines:
        ids = tokenizer.encode(line)
        # closed vocabulary: unk only where the text has it
        assert tokenizer.unk_id not in ids or "<unk>" in line
        assert tokenizer.decode(ids) == " ".join(line.split())


def test_unknown_words_map_to_unk(tiny_tokenizer):
    assert tiny_tokenizer.encode("c a zebra") == [4, 6, 3]
    assert tiny_tokenizer.decode([4, 0, 0]) == "c"  # padding is dropped
    assert tiny_tokenizer.vocab_size == 7
    assert [round_up(n, 8) for n in (1, 8, 9)] == [8, 8, 16]
    with pytest.raises(ValueError, match="positive integer"):
        round_up(7, 0)


def test_encode_file_appends_eos_per_line(tmp_path, tiny_tokenizer):
    (tmp_path / "t.txt").write_text(" a c \n\n b zebra\n")
    assert tiny_tokenizer.encode_file(tmp_path / "t.txt").tolist() == [
        6,
        4,
        2,
        2,
        5,
        3,
        2,
    ]


@pytest.mark.parametrize(
    "content, message",
    [
        (None, "not found"),
        ("<pad>\n<bos>\n<eos>\n<unk>\na\na\n", "'a' duplicates line 5"),
        ("<pad>\n<bos>\n\n<eos>\n<unk>\n", "line 3: '' is empty"),
        (
            "<pad>\n<bos>\n<eos>\na b\n<unk>\n",
            "line 4: 'a b' is empty or holds white space",
        ),
        ("<pad>\n<bos>\n<eos>\na\n", "lacks the special tokens <unk>"),
    ],
)
def test_bad_vocab_files(tmp_path, content, message):
    path = tmp_path / "vocab.txt"
    if content is not None:
        path.write_text(content)
    with pytest.raises(VocabError, match=message):
        WordTokenizer(path)


def test_data_desc_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown dataset 'ptb'"):
        prepare_corpus(tmp_path, dataset_name="ptb")
    with pytest.raises(FileNotFoundError, match="download it first"):
        prepare_corpus(tmp_path)


def scored_targets(ds: LanguageModelingDataset) -> list[int]:
    """The stream index of every scored target, window by window, checking each label
    and its context."""
    L, k = ds.max_sequence_length, ds.batch_step
    out = []
    for i in range(len(ds)):
        inputs, mask, labels = ds[i]
        assert inputs.shape == mask.shape == labels.shape == (L,)
        for p in torch.nonzero(labels != ds.tokenizer.pad_id).flatten().tolist():
            t = i * k + p + 1  # target index into ds.ids
            assert labels[p] == ds.ids[t] and mask[p]
            # context of at least L - k tokens after the first window
            assert i == 0 or p >= L - k
            out.append(t)
        # real tokens first, padding last
        assert mask.tolist() == sorted(mask.tolist(), reverse=True)
    return out


@pytest.mark.parametrize("n_tokens", [1, 7, 64, 100, 101])
@pytest.mark.parametrize("L, k", [(8, 8), (8, 1), (8, 3), (16, 5), (10, 10), (1, 1)])
def test_every_token_is_scored_exactly_once(tiny_tokenizer, n_tokens, L, k):
    stream = torch.randint(
        4, 7, (n_tokens,), generator=torch.Generator().manual_seed(n_tokens)
    )
    ds = LanguageModelingDataset(
        tiny_tokenizer, stream, max_sequence_length=L, batch_step=k
    )
    assert ds.num_targets == n_tokens
    assert scored_targets(ds) == list(range(1, n_tokens + 1))


def test_exactly_once_on_the_real_test_split(desc, tokenizer):
    ds = LanguageModelingDataset(
        tokenizer, desc.test_file, max_sequence_length=64, batch_step=48
    )
    assert ds.num_targets == 245_569  # the split's token count, <eos> included
    labels = torch.stack([ds[i][2] for i in range(len(ds))])
    assert int((labels != tokenizer.pad_id).sum()) == 245_569


def test_bad_window_arguments(tiny_tokenizer):
    with pytest.raises(ValueError, match="1 <= batch_step <= max_sequence_length"):
        LanguageModelingDataset(
            tiny_tokenizer, torch.arange(4, 7), max_sequence_length=4, batch_step=5
        )
    with pytest.raises(IndexError):
        LanguageModelingDataset(
            tiny_tokenizer, torch.arange(4, 7), max_sequence_length=4
        )[1]


def test_data_layer_batches_and_seeded_shuffle(tiny_tokenizer):
    ds = LanguageModelingDataset(
        tiny_tokenizer, torch.randint(4, 7, (1000,)), max_sequence_length=16
    )
    batches = list(LanguageModelingDataLayer(ds, batch_size=8))
    inputs, mask, labels = batches[0]
    assert (
        inputs.shape == mask.shape == labels.shape == (8, 16)
        and mask.dtype == torch.bool
    )
    assert sum(len(b[0]) for b in batches) == len(ds) == 63
    # labels are the inputs shifted by one
    assert torch.equal(labels[0, :-1], inputs[0, 1:])

    def first_batch(seed):
        g = torch.Generator().manual_seed(seed)
        return next(
            iter(LanguageModelingDataLayer(ds, batch_size=8, shuffle=True, generator=g))
        )[0]

    assert torch.equal(first_batch(1), first_batch(1)) and not torch.equal(
        first_batch(1), first_batch(2)
    )


@pytest.mark.parametrize(
    "L, k, n", [(8, 8, 37), (8, 3, 37), (8, 1, 5), (16, 4, 16), (4, 4, 3)]
)
def test_label_counts_are_the_scored_labels_of_each_window(tiny_tokenizer, L, k, n):
    stream = torch.randint(4, 7, (n,), generator=torch.Generator().manual_seed(n))
    ds = LanguageModelingDataset(
        tiny_tokenizer, stream, max_sequence_length=L, batch_step=k
    )
    by_hand = [int((ds[i][2] != ds.pad_id).sum()) for i in range(len(ds))]
    assert ds.label_counts().tolist() == by_hand and sum(by_hand) == ds.num_targets
    with_pad = LanguageModelingDataset(
        tiny_tokenizer, torch.cat([stream, torch.tensor([0, 5])]), L, k
    )
    # a pad id in the text
    assert with_pad.label_counts().tolist() == [
        int((w[2] != 0).sum()) for w in with_pad
    ]
