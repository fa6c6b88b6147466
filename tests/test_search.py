from edgeprune.planner.search import layer_cost_share


def test_layer_cost_share_smollm2_shapes():
    cfg = dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
               head_dim=64, intermediate_size=1536, vocab_size=49152)
    share = layer_cost_share(cfg)
    layer = 576 * 64 * (18 + 6) + 3 * 576 * 1536
    assert abs(share - layer / (30 * layer + 49152 * 576)) < 1e-12
    assert 0.025 < share < 0.03
