import torch

import search_spaces as ss
from nas.compress.cluster import cluster_weights, kmeans_1d


def test_kmeans_finds_separated_clusters():
    v = torch.cat([torch.full((50,), -1.0), torch.full((30,), 0.5), torch.full((20,), 2.0)]) + 0.01 * torch.randn(100)
    c, labels = kmeans_1d(v, 3)
    torch.testing.assert_close(c.sort().values, torch.tensor([-1.0, 0.5, 2.0]), atol=0.01, rtol=0)
    assert torch.bincount(labels).sort().values.tolist() == [20, 30, 50]


def test_cluster_weights_shares_values_and_reports_storage():
    torch.manual_seed(0)
    arch = ss.decode("r16_i1_n10:stem_c16_s1_re6:ir_k3_e3_c24_re6:head_c64_re6")
    model = ss.build(arch).eval()
    clustered, rep = cluster_weights(model, 16)
    w = clustered.head.conv.weight
    assert len(torch.unique(w)) <= 16
    assert rep.index_bits == 4 and rep.ratio > 5
    x = torch.randn(4, 1, 16, 16)
    # 16 shared values keep the function close (relative error of the logits small)
    with torch.no_grad():
        ref, got = model(x), clustered(x)
    assert float((got - ref).norm() / ref.norm()) < 0.2
    assert len(torch.unique(model.head.conv.weight)) > 16  # original untouched
