"""The GPU memory plan (placement.plan): pure arithmetic, checked here without a GPU."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from minigrok.engine.devices import parse_devices
from minigrok.engine.placement import Place, plan, reserve_bytes
from minigrok.errors import MinigrokError
from minigrok.formats.checkpoint import layer_bytes
from minigrok.reference.config import preset

GiB = 2**30
GROK1 = preset("grok-1")


def test_layer_bytes_add_up_to_the_real_checkpoint():
    # 64 layers plus the float32 embeddings and the final norm: the 318 GB (296 GiB) the
    # real checkpoint's files hold, to within the pickle headers.
    total = 64 * layer_bytes(GROK1) + 131072 * 6144 * 4 + 6144 * 4
    assert 316e9 < total < 318.5e9


# A Grok-1 layer is 4.584 GiB, the float32 embeddings 3 GiB, the working reserve 1.75 GiB
# (4.16 GiB on a GPU that also streams). An H100 has ~79 GiB free, an H200 ~139 GiB.
@pytest.mark.parametrize("gpus, gib, per_gpu", [
    (4, 79, [16, 16, 16, 16]),   # (79 - 3 - 1.75) / 4.584 = 16.2, (79 - 1.75) / 4.584 = 16.9
    (3, 139, [29, 29, 6]),       # 29.3 and 29.9: the third GPU takes the last 6
    (8, 79, [16, 16, 16, 16, 0, 0, 0, 0]),
    (1, 79, [15]),               # (79 - 3 - 4.16) / 4.584 = 15.7: 15 resident, 49 streamed
    (2, 139, [29, 29]),          # 58 resident, 6 streamed on the second GPU
])
def test_grok1_on_real_gpus(gpus, gib, per_gpu):
    places = plan(GROK1, [gib * GiB] * gpus)
    assert len(places) == 64
    assert [sum(p.resident and p.device == g for p in places) for g in range(gpus)] == per_gpu
    assert all(p.device == gpus - 1 for p in places if not p.resident)


def check_plan(cfg, free, places):
    """Every layer placed, in order, nothing over any GPU's free memory."""
    assert len(places) == cfg.num_layers
    devices = [p.device for p in places]
    assert devices == sorted(devices)
    streamed = [i for i, p in enumerate(places) if not p.resident]
    last = len(free) - 1
    if streamed:                              # only the last layers, only on the last GPU
        assert streamed == list(range(streamed[0], cfg.num_layers))
        assert all(places[i].device == last for i in streamed)
    for gpu, room in enumerate(free):
        used = sum(layer_bytes(cfg) for p in places if p.device == gpu and p.resident)
        used += cfg.vocab_size * cfg.emb_size * 4 if gpu == 0 else 0
        on_here = [p for p in places if p.device == gpu]
        if on_here:
            assert used + reserve_bytes(cfg, bool(streamed) and gpu == last) <= room


@settings(max_examples=200, deadline=None)
@given(layers=st.integers(1, 64), free=st.lists(st.integers(0, 200), min_size=1, max_size=5))
def test_plan_fits_or_says_why(layers, free):
    cfg = preset("grok-1", num_layers=layers)
    free = [f * GiB for f in free]
    try:
        places = plan(cfg, free)
    except MinigrokError as e:
        assert "not enough GPU memory" in str(e)
        # Refused only when the first GPU cannot hold the embeddings and its working room, or
        # the last GPU cannot hold the stream buffers beside what it must hold.
        embeddings = cfg.vocab_size * cfg.emb_size * 4
        room = free[-1] - (embeddings if len(free) == 1 else 0)
        assert (free[0] - embeddings < reserve_bytes(cfg, False)
                or room < reserve_bytes(cfg, True))
        return
    check_plan(cfg, free, places)
    # Streaming only happens when the layers really do not fit resident.
    fits = sum(max(0, (room - reserve_bytes(cfg, False)) // layer_bytes(cfg))
               for room in [free[0] - cfg.vocab_size * cfg.emb_size * 4] + free[1:])
    if fits >= layers:
        assert all(p.resident for p in places)


def test_plan_streams_under_a_small_limit():
    cfg = preset("tiny")
    need = layer_bytes(cfg)
    limit = cfg.vocab_size * cfg.emb_size * 4 + reserve_bytes(cfg, True) + 3 * need
    places = plan(cfg, [limit])
    assert places[:3] == [Place(0, True)] * 3 and places[3:] == [Place(0, False)] * 9


def test_parse_devices():
    assert parse_devices("cuda") == [0]
    assert parse_devices("cuda:2") == [2]
    assert parse_devices("cuda:0,1,3") == [0, 1, 3]
    for bad in ("cuda:x", "cuda:0,0", "cuda:-1", "cuda:"):
        if bad == "cuda:":
            assert parse_devices(bad) == [0]
            continue
        with pytest.raises(MinigrokError, match="cuda"):
            parse_devices(bad)
