from aggregator.refused_transfers import RefusedTransfers


def test_a_refused_transfer_is_answered_once_and_the_oldest_are_forgotten():
    seen = RefusedTransfers(remembered=2)
    assert not seen.already_answered("dev-0", "t1")
    assert seen.already_answered("dev-0", "t1")
    assert not seen.already_answered("dev-1", "t1")  # another device's transfer
    assert not seen.already_answered("dev-0", "t2")  # forgets (dev-0, t1)
    assert not seen.already_answered("dev-0", "t1")


def test_a_transfer_without_an_id_is_always_answered():
    seen = RefusedTransfers()
    assert not seen.already_answered("dev-0", None)
    assert not seen.already_answered("dev-0", None)
