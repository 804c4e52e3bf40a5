import pytest
import torch
import torch.nn.functional as F

from transformers.modeling_outputs import BaseModelOutputWithPooling

from configuration_clasp import ClaspConfig
from modeling_clasp import ClaspModel
from tiny import tiny_config, tiny_model, tiny_processor, tone

TEXTS = ["the cat sat", "le chat est sur la mat", "der hund ist", "el perro"]


@pytest.fixture(scope="module", params=["hubert", "whisper"])
def speech(request):
    return request.param


def clips():
    return [tone(1.2, seed=1), tone(0.4, freq=330, seed=2), tone(0.8, freq=150, seed=3), tone(0.25, freq=500, seed=4)]


def test_shapes_and_normalisation(speech, tmp_path):
    config = tiny_config(speech)
    model = tiny_model(config).eval()
    inputs = tiny_processor(config, tmp_path)(text=TEXTS, audio=clips(), sampling_rate=16000)
    with torch.no_grad():
        out = model(**inputs)
    assert out.audio_embeds.shape == (4, config.projection_dim)
    assert out.text_embeds.shape == (4, config.text_config.hidden_size)
    assert out.logits_per_audio.shape == (4, 4)
    torch.testing.assert_close(out.logits_per_text, out.logits_per_audio.T)
    torch.testing.assert_close(out.audio_embeds.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(out.speech_embeds.norm(dim=-1), torch.ones(4))
    torch.testing.assert_close(out.spectrogram_embeds.norm(dim=-1), torch.ones(4))
    scale = model.logit_scale.exp()
    torch.testing.assert_close(out.logits_per_audio, scale * out.audio_embeds @ out.text_embeds.T)


# wav2vec2-base-style (group norm over time), HuBERT-large-style (layer norm per frame), Whisper.
@pytest.mark.parametrize("speech", ["wav2vec2", "hubert", "whisper"])
@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_clip_embedding_does_not_depend_on_batch(speech, pooling, tmp_path):
    """Padding a short clip next to a long one must not change its embedding (real frames only)."""
    config = tiny_config(speech, speech_pooling=pooling, speech_pooling_heads=2)
    model = tiny_model(config).eval()
    processor = tiny_processor(config, tmp_path)
    short = tone(0.4, freq=330, seed=2)
    with torch.no_grad():
        alone = model.get_audio_features(**processor(audio=[short], sampling_rate=16000)).pooler_output
        batched = model.get_audio_features(**processor(audio=[tone(2.5, seed=9), short], sampling_rate=16000)).pooler_output
    torch.testing.assert_close(batched[1:], alone, atol=1e-5, rtol=0)


def test_input_names_are_transformers_and_unknown_ones_are_refused(speech, tmp_path):
    config = tiny_config(speech)
    model, processor = tiny_model(config).eval(), tiny_processor(config, tmp_path)
    inputs = processor(text=TEXTS[:2], audio=clips()[:2], sampling_rate=16000)
    speech_input = "input_features" if speech == "whisper" else "input_values"
    assert set(inputs) == {"input_ids", "token_type_ids", "attention_mask", speech_input, f"{speech_input}_mask", "pixel_values"}
    assert model.main_input_name == speech_input
    with torch.no_grad():
        out = model(**inputs)
        audio = model.get_audio_features(**{k: inputs[k] for k in (speech_input, f"{speech_input}_mask", "pixel_values")})
        text = model.get_text_features(inputs["input_ids"], inputs["attention_mask"])
        assert isinstance(audio, BaseModelOutputWithPooling) and isinstance(text, BaseModelOutputWithPooling)  # as CLAP
        torch.testing.assert_close(audio.pooler_output, out.audio_embeds)
        torch.testing.assert_close(text.pooler_output, out.text_embeds)
        with pytest.raises(TypeError, match="unexpected keyword arguments: output_attentions, spectrogram"):
            model(**inputs, spectrogram=inputs["pixel_values"], output_attentions=True)
        with pytest.raises(TypeError, match="get_audio_features.*unexpected keyword arguments: attention_mask"):
            model.get_audio_features(pixel_values=inputs["pixel_values"], attention_mask=inputs["attention_mask"])
        # The names before transformers' (an earlier version's processor, user code) still work, with a warning.
        old = {"input_values": inputs[speech_input], "audio_attention_mask": inputs[f"{speech_input}_mask"],
               "input_features": inputs["pixel_values"]}
        with pytest.warns(FutureWarning, match="audio_attention_mask"):
            deprecated = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], **old)
        torch.testing.assert_close(deprecated.logits_per_audio, out.logits_per_audio)
        with pytest.warns(FutureWarning, match="pixel_values"):
            torch.testing.assert_close(model.get_audio_features(**old).pooler_output, out.audio_embeds)


def test_whisper_real_length_matches_library_forward_on_30s():
    """On a full 30 s input our part-by-part Whisper encoder is the library's forward."""
    torch.manual_seed(0)
    model = tiny_model(tiny_config("whisper")).eval()
    features = torch.randn(2, 8, 3000)
    with torch.no_grad():
        library = model.speech_model(features).last_hidden_state
        ours, _ = model._whisper_hidden_states(features, None)
    torch.testing.assert_close(ours[-1], library, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_cached_branch_features_run_the_same_fusion(speech, pooling, tmp_path):
    """What `clasp features` caches (speech frames, or their mean) gives the model's own logits."""
    config = tiny_config(speech, speech_pooling=pooling, speech_pooling_heads=2)
    model = tiny_model(config).eval()
    inputs = tiny_processor(config, tmp_path)(text=TEXTS, audio=clips(), sampling_rate=16000)
    with torch.no_grad():
        full = model(**inputs)
        speech_input = "input_features" if speech == "whisper" else "input_values"
        frames, weights = model.get_speech_frames(inputs[speech_input], inputs[f"{speech_input}_mask"])
        from_frames = model(speech_frames=frames, speech_frame_weights=weights, spectrogram_embeds=full.spectrogram_embeds,
                            text_embeds=full.text_embeds)
        torch.testing.assert_close(from_frames.logits_per_audio, full.logits_per_audio)
        if pooling == "mean":
            pooled = model(speech_embeds=full.speech_embeds, spectrogram_embeds=full.spectrogram_embeds,
                           text_embeds=full.text_embeds)
            torch.testing.assert_close(pooled.logits_per_audio, full.logits_per_audio)
        else:
            with pytest.raises(ValueError, match="speech_frames"):
                model(speech_embeds=full.speech_embeds, spectrogram_embeds=full.spectrogram_embeds)


@pytest.mark.parametrize("stride", [1, 3, 4])
def test_window_mean_keeps_the_mean_of_real_frames(stride):
    """Windows weighted by their share of real frames average to the mean of the real frames, so a
    cache of windows serves "mean" pooling exactly, whatever the stride."""
    from modeling_clasp.modeling_clasp import masked_mean, window_mean

    torch.manual_seed(0)
    hidden = torch.randn(3, 11, 5)
    mask = torch.zeros(3, 11)
    mask[0, :11], mask[1, :6], mask[2, :1] = 1, 1, 1
    windows, weights = window_mean(hidden, mask, stride)
    assert windows.shape == (3, -(-11 // stride), 5)
    torch.testing.assert_close(masked_mean(windows, weights), masked_mean(hidden, mask))
    assert (weights[2, 1:] == 0).all() and weights[0, 0] == 1.0


def test_attention_pooling_is_multihead_attention_with_one_query():
    """The pooler's shortcut (no frame is projected) gives nn.MultiheadAttention's output exactly."""
    from modeling_clasp.modeling_clasp import ClaspAttentionPooling

    torch.manual_seed(0)
    pooler = ClaspAttentionPooling(dim=16, num_heads=4)
    for parameter in pooler.parameters():
        torch.nn.init.normal_(parameter, std=0.3)
    reference = torch.nn.MultiheadAttention(16, 4, batch_first=True)
    with torch.no_grad():
        reference.in_proj_weight.copy_(torch.cat([pooler.q_proj.weight, pooler.k_proj.weight, pooler.v_proj.weight]))
        # Any key bias: it adds one constant to every frame's score, which the softmax ignores.
        reference.in_proj_bias.copy_(torch.cat([pooler.q_proj.bias, torch.randn(16), pooler.v_proj.bias]))
        reference.out_proj.load_state_dict(pooler.out_proj.state_dict())
    frames, weights = torch.randn(3, 7, 16), torch.ones(3, 7)
    weights[1, 4:], weights[2, 1:] = 0, 0
    with torch.no_grad():
        ours = pooler(frames, weights)
        expected = reference(pooler.probe.expand(3, 1, 16), frames, frames, key_padding_mask=weights == 0)[0][:, 0]
    torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="divide"):
        ClaspAttentionPooling(dim=16, num_heads=3)


def test_attention_pooler_trains_with_a_frozen_encoder(tmp_path):
    config = tiny_config("whisper", speech_pooling="attention", speech_pooling_heads=2)
    model = tiny_model(config).train()
    inputs = tiny_processor(config, tmp_path)(text=TEXTS, audio=clips(), sampling_rate=16000)
    model(**inputs, return_loss=True).loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.speech_pooler.parameters())
    assert all(p.grad is None for p in model.speech_model.parameters())


def test_text_features_pool_as_sentence_transformers(tmp_path):
    """Mean over real tokens then L2 normalisation: padding in the batch changes nothing."""
    config = tiny_config()
    model = tiny_model(config).eval()
    processor = tiny_processor(config, tmp_path)
    with torch.no_grad():
        alone = model.get_text_features(**processor(text=["der hund"])).pooler_output
        batched = model.get_text_features(**processor(text=["the cat sat on the red mat", "der hund"])).pooler_output
        hidden = model.text_model(**processor(text=["der hund"])).last_hidden_state
    torch.testing.assert_close(batched[1:], alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(alone, F.normalize(hidden.mean(dim=1), dim=-1))


@pytest.mark.parametrize("fusion", ["concat", "gating", "speech_only", "spectrogram_only"])
@pytest.mark.parametrize("loss", ["contrastive", "contrastive_fixed", "huber"])
def test_gradients_reach_only_trainable_parts(fusion, loss, tmp_path):
    config = tiny_config(fusion=fusion, loss=loss)
    model = tiny_model(config).train()
    inputs = tiny_processor(config, tmp_path)(text=TEXTS, audio=clips(), sampling_rate=16000)
    out = model(**inputs, return_loss=True)
    assert torch.isfinite(out.loss)
    out.loss.backward()
    for name, param in model.named_parameters():
        if name.startswith(("speech_model.", "spectrogram_model.", "text_model.")):
            assert param.grad is None, name
    head_grads = [p.grad for n, p in model.named_parameters() if n.startswith("fusion.")]
    assert all(g is not None for g in head_grads) and sum(g.abs().sum() for g in head_grads) > 0
    assert (model.logit_scale.grad is not None) == (loss == "contrastive")
    # frozen backbones stay in eval mode (batch norm statistics untouched) while the head trains
    assert model.fusion.training and not model.spectrogram_model.training


@pytest.mark.parametrize("fusion", ["speech_only", "spectrogram_only"])
def test_one_branch_ablation_needs_and_runs_only_its_branch(fusion, tmp_path, monkeypatch):
    """The paper's ablations: one branch alone. The other branch is neither run nor required."""
    config = tiny_config("whisper", fusion=fusion)
    model = tiny_model(config).eval()
    inputs = tiny_processor(config, tmp_path)(text=TEXTS, audio=clips(), sampling_rate=16000)
    unused = "get_spectrogram_embeds" if fusion == "speech_only" else "get_speech_embeds"
    monkeypatch.setattr(model, unused, lambda *a, **k: pytest.fail(f"{unused} ran"))
    with torch.no_grad():
        full = model(**inputs)
        if fusion == "speech_only":
            cached = model(speech_embeds=full.speech_embeds, text_embeds=full.text_embeds)
        else:
            cached = model(spectrogram_embeds=full.spectrogram_embeds, text_embeds=full.text_embeds)
    torch.testing.assert_close(cached.logits_per_audio, full.logits_per_audio)
    assert not hasattr(model.fusion, "spectrogram_mlp" if fusion == "speech_only" else "speech_mlp")


def test_unfrozen_speech_encoder_gets_gradients(tmp_path):
    config = tiny_config(freeze_speech_encoder=False)
    model = tiny_model(config).train()
    inputs = tiny_processor(config, tmp_path)(text=TEXTS, audio=clips(), sampling_rate=16000)
    model(**inputs, return_loss=True).loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.speech_model.parameters())
    assert all(p.grad is None for p in model.text_model.parameters())


@pytest.mark.parametrize("fusion", ["concat", "gating"])
def test_head_learns_a_toy_alignment(fusion):
    """On cached features of a learnable toy problem the contrastive loss goes down."""
    torch.manual_seed(0)
    config = tiny_config(fusion=fusion)
    model = tiny_model(config).train()
    n = 32
    speech = torch.randn(n, config.speech_hidden_size)
    spectrogram = torch.randn(n, config.spectrogram_hidden_size)
    text = F.normalize(torch.randn(n, config.projection_dim), dim=-1)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=3e-3)
    losses = []
    for _ in range(60):
        loss = model(speech_embeds=speech, spectrogram_embeds=spectrogram, text_embeds=text, return_loss=True).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_config_round_trip(tmp_path):
    config = tiny_config("whisper", fusion="gating", loss="huber", speech_pooling="attention")
    config.save_pretrained(tmp_path)
    loaded = ClaspConfig.from_pretrained(tmp_path)
    assert loaded.to_dict() == config.to_dict()
    assert loaded.speech_config.model_type == "whisper" and loaded.speech_is_whisper


def test_default_config_has_the_papers_shapes():
    config = ClaspConfig()
    assert config.speech_hidden_size == 1024  # HuBERT-large
    assert config.spectrogram_config.model_type == "efficientnet" and config.spectrogram_hidden_size == 2560  # B7
    assert config.text_config.hidden_size == 768 and config.projection_dim == 768  # LaBSE
    assert config.fusion_branch_dims == [768, 576, 768] and config.fusion_head_dims == [1024, 800]


def test_bad_config_values_are_refused():
    with pytest.raises(ValueError, match="fusion"):
        tiny_config(fusion="sum")
    with pytest.raises(ValueError, match="loss"):
        tiny_config(loss="mse")
    with pytest.raises(ValueError, match="speech_pooling"):
        tiny_config(speech_pooling="max")


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_model_round_trip(pooling, tmp_path):
    config = tiny_config(speech_pooling=pooling, speech_pooling_heads=2)
    model = tiny_model(config).eval()
    model.save_pretrained(tmp_path)
    loaded = ClaspModel.from_pretrained(tmp_path).eval()
    for (name, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        torch.testing.assert_close(a, b, msg=name)


def test_loaded_model_keeps_its_backbones_frozen(tmp_path):
    tiny_model(tiny_config()).save_pretrained(tmp_path)
    loaded = ClaspModel.from_pretrained(tmp_path)
    trainable = {name.split(".")[0] for name, p in loaded.named_parameters() if p.requires_grad}
    assert trainable == {"fusion", "logit_scale"}


def test_from_pretrained_gives_loading_info_on_request(tmp_path):
    tiny_model(tiny_config()).save_pretrained(tmp_path)
    model, info = ClaspModel.from_pretrained(tmp_path, output_loading_info=True)
    assert isinstance(model, ClaspModel) and not model.training
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert {name.split(".")[0] for name, p in model.named_parameters() if p.requires_grad} == {"fusion", "logit_scale"}


def test_logit_scale_above_the_cap_gets_a_gradient_and_loads_clamped(tmp_path):
    """The cap is kept by the trainer after each step (as open_clip), not in forward, where the
    gradient of a clamped value is 0; a checkpoint holding a value above the cap loads clamped."""
    config = tiny_config()
    model = tiny_model(config).train()
    with torch.no_grad():
        model.logit_scale.fill_(config.logit_scale_max + 0.5)
    generator = torch.Generator().manual_seed(0)
    out = model(speech_embeds=torch.randn(6, config.speech_hidden_size, generator=generator),
                spectrogram_embeds=torch.randn(6, config.spectrogram_hidden_size, generator=generator),
                text_embeds=torch.randn(6, config.projection_dim, generator=generator), return_loss=True)
    out.loss.backward()
    assert model.logit_scale.grad != 0
    model.save_pretrained(tmp_path)
    assert ClaspModel.from_pretrained(tmp_path).logit_scale.item() == pytest.approx(config.logit_scale_max)


def _cross_entropy_by_hand(logits, row, allowed) -> float:
    """-log softmax of logits[row][row] over the columns in `allowed`, one term at a time."""
    import math

    return -(logits[row][row] - math.log(sum(math.exp(logits[row][j]) for j in allowed)))


@pytest.mark.parametrize("ids", [None, [7, 7, 3, 5, 3]])
def test_the_loss_leaves_other_readings_of_a_sentence_out_of_the_negatives(ids):
    """Symmetric InfoNCE; with pair_group_ids, row i's denominator holds its own pair and every
    column of another group only (rows 0-1 and 2-4 read the same sentences)."""
    from modeling_clasp.modeling_clasp import clasp_loss

    generator = torch.Generator().manual_seed(0)
    audio = F.normalize(torch.randn(5, 6, generator=generator), dim=-1)
    text = F.normalize(torch.randn(5, 6, generator=generator), dim=-1)
    text[1] = text[0]  # a twin: the same text embedding, which no softmax could tell apart
    scale = 10.0
    per_audio = (scale * audio @ text.T).tolist()
    per_text = (scale * text @ audio.T).tolist()
    expected = 0.0
    for i in range(5):
        allowed = [j for j in range(5) if ids is None or j == i or ids[j] != ids[i]]
        expected += (_cross_entropy_by_hand(per_audio, i, allowed) + _cross_entropy_by_hand(per_text, i, allowed)) / 10
    loss = clasp_loss(audio, text, torch.tensor(scale), tiny_config(),
                      None if ids is None else torch.tensor(ids, dtype=torch.int64))
    assert loss.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("ids", [
    [7, 7, 3, 5, 3],  # a list
    torch.tensor([7.0, 7.0, 3.0, 5.0, 3.0]),  # float: an int64 hash would lose bits
    torch.tensor([True, True, False, False, True]),  # a mask, not ids
    torch.tensor([[7], [7], [3], [5], [3]]),
    torch.tensor([7, 7, 3]),
    torch.tensor(7),
])
@pytest.mark.parametrize("loss", ["contrastive", "huber"])
def test_pair_group_ids_of_a_wrong_shape_or_dtype_are_refused_by_name(ids, loss):
    """ClaspModel.forward(pair_group_ids=...) takes one integer id a row of the batch; anything else
    failed deep in the loss (IndexError, 'Expected target size'), or trained silently (floats, bools)."""
    model = tiny_model(tiny_config(loss=loss)).eval()
    generator = torch.Generator().manual_seed(0)
    features = dict(speech_embeds=torch.randn(5, model.config.speech_hidden_size, generator=generator),
                    spectrogram_embeds=torch.randn(5, model.config.spectrogram_hidden_size, generator=generator),
                    text_embeds=torch.randn(5, model.config.projection_dim, generator=generator))
    with pytest.raises(ValueError, match=r"pair_group_ids: expected an integer tensor of shape \[5\]"):
        model(**features, return_loss=True, pair_group_ids=ids)
    # int32 ids group as int64 ones do; under huber, which has no negatives, they change nothing.
    grouped = model(**features, return_loss=True, pair_group_ids=torch.tensor([7, 7, 3, 5, 3], dtype=torch.int32)).loss
    assert grouped == model(**features, return_loss=True, pair_group_ids=torch.tensor([7, 7, 3, 5, 3])).loss
    assert (grouped == model(**features, return_loss=True).loss) == (loss == "huber")
