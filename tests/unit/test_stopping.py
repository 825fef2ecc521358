"""StopRequested's reason: what the requeue marker and the log say about an agreed stop."""

import signal

from gandist.training.stopping import StopRequested


def test_a_stop_learnt_from_another_rank_names_this_ranks_own_signal_once_it_arrives():
    # a dying launcher signals every rank at once: the vote may see the other rank's request first
    stopper = StopRequested(None, 0, 1)
    assert stopper.vote(1, any_rank=lambda flag: True)
    assert stopper.why() == "another rank asked to stop"
    stopper._handle(signal.SIGTERM, None)
    assert stopper.why() == "signal SIGTERM"


def test_a_stop_this_rank_asked_for_keeps_its_reason():
    stopper = StopRequested(None, 0, 1)
    assert not stopper.vote(1, any_rank=lambda flag: flag)
    assert stopper.why() == "stop requested"
    stopper._handle(signal.SIGUSR1, None)
    assert stopper.vote(2, any_rank=lambda flag: flag)
    assert stopper.why() == "signal SIGUSR1"
