"""Which files of a saved CLASP folder are its weights: the ones transformers loads, nothing else."""

import shutil

import pytest
import torch
from safetensors.torch import save_file

from backbones_clasp.checkpoints import check_checkpoint
from modeling_clasp import ClaspModel
from search_clasp import model_identity
from search_clasp.search import load_text_model
from tiny import save_tiny_clasp


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return save_tiny_clasp(tmp_path_factory.mktemp("model") / "model")


def test_other_safetensors_beside_the_weights_are_not_weights(model_dir, tmp_path):
    """transformers loads model.safetensors (or the shards its index names); a user's embeddings file
    or our fixture's expected outputs beside it are not the model and must not make it "broken"."""
    folder = tmp_path / "with_extra"
    shutil.copytree(model_dir, folder)
    save_file({"audio_embeds": torch.zeros(2, 4), "text_embeds": torch.zeros(2, 4)}, str(folder / "embeddings.safetensors"))
    check_checkpoint(folder)
    assert model_identity(folder) == model_identity(model_dir)
    assert load_text_model(folder).text_model is not None


def test_sharded_weights_are_read_through_their_index(model_dir, tmp_path):
    model = ClaspModel.from_pretrained(model_dir)
    model.save_pretrained(tmp_path / "sharded", max_shard_size="200KB")
    shutil.copy(model_dir / "processor_config.json", tmp_path / "sharded")
    assert (tmp_path / "sharded" / "model.safetensors.index.json").is_file()
    check_checkpoint(tmp_path / "sharded")
    load_text_model(tmp_path / "sharded")
    last_shard = sorted((tmp_path / "sharded").glob("model-*-of-*.safetensors"))[-1]
    last_shard.unlink()
    with pytest.raises(ValueError, match=last_shard.name):
        check_checkpoint(tmp_path / "sharded")


def test_a_folder_without_the_weights_file_is_refused_naming_it(model_dir, tmp_path):
    folder = tmp_path / "renamed"
    shutil.copytree(model_dir, folder)
    (folder / "model.safetensors").rename(folder / "weights.safetensors")
    for check in (check_checkpoint, model_identity, load_text_model):
        with pytest.raises(ValueError, match="model.safetensors"):
            check(folder)
