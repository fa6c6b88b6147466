from edgeprune.planner.search import Point, layer_cost_share, next_k, predict_k


def checks(latency, bound=1.0):
    return {"latency_s": {"required": bound, "measured": latency, "kind": "max", "met": latency <= bound}}


def test_one_point_prediction_uses_layer_share():
    # 2.0 s measured, 1.0 s needed, each layer 5 % of the cost -> 10 layers
    assert predict_k([(0, checks(2.0))], share=0.05) == 10


def test_two_points_fit_the_measured_slope():
    # 0 -> 2.0 s, 4 -> 1.6 s: 0.1 s per layer; need 1.0 s -> k = 4 + 6 = 10
    assert predict_k([(0, checks(2.0)), (4, checks(1.6))], share=0.5) == 10


def test_next_k_met_infeasible_and_never_retries():
    assert next_k([(0, checks(0.5))], 0.05, 10) == ("met", 0)
    # shape-only prediction beyond the limit: measure the limit first, then trust the fitted slope
    assert next_k([(0, checks(2.0))], 0.05, 5) == ("try", 5)
    assert next_k([(0, checks(2.0)), (5, checks(1.8))], 0.05, 5) == ("infeasible", 25)


def test_quality_floor_caps_k_and_reports_it():
    # k=15 met speed but broke quality; the line through (0, 1.5) and (15, 0.5) reaches 1.0 at 7.5 -> 8
    hist = [Point(0, checks(1.5)), Point(15, checks(0.5), quality_ok=False)]
    assert next_k(hist, 0.02, 15) == ("try", 8)
    # 11 broke quality too and 12 would be needed for speed -> quality_floor
    hist = [Point(0, checks(1.5)), Point(10, checks(1.1)), Point(11, checks(0.9), quality_ok=False)]
    verdict, k = next_k(hist, 0.02, 15)
    assert verdict == "quality_floor" and k >= 11
    # prediction says 3, but 3 was measured and missed: try 4
    hist = [(0, checks(1.3)), (3, checks(1.01))]
    assert next_k(hist, 0.1, 10)[1] >= 4


def test_min_rate_constraint_is_inverted():
    ch = {"decode_tps": {"required": 20.0, "measured": 10.0, "kind": "min", "met": False}}
    # time per token 0.1 -> 0.05 needed; share 0.05 -> slope -0.005 per layer -> 10 layers
    assert predict_k([(0, ch)], 0.05) == 10


def test_layer_cost_share_smollm2_shapes():
    cfg = dict(hidden_size=576, num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
               head_dim=64, intermediate_size=1536, vocab_size=49152)
    share = layer_cost_share(cfg)
    layer = 576 * 64 * (18 + 6) + 3 * 576 * 1536
    assert abs(share - layer / (30 * layer + 49152 * 576)) < 1e-12
    assert 0.025 < share < 0.03
