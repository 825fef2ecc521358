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


def test_a_stop_learnt_from_another_rank_names_the_stop_file_that_appeared_after_this_ranks_check(tmp_path):
    # on a shared filesystem the batch shell's stop file can appear between two ranks' checks of one step:
    # the rank that checked first learns of the stop from the vote, but the file is the reason
    stop_file = tmp_path / "STOP"
    stopper = StopRequested(stop_file, 0, 1)
    assert stopper.vote(5, any_rank=lambda flag: True)
    assert stopper.why() == "another rank asked to stop"
    stop_file.touch()
    assert stopper.why() == f"stop file {stop_file}"


def test_the_reason_named_after_the_vote_ignores_check_every(tmp_path):
    stop_file = tmp_path / "STOP"
    stopper = StopRequested(stop_file, 0, 10)
    assert stopper.vote(3, any_rank=lambda flag: True)  # step 3: no look at the file on this rank
    stop_file.touch()
    assert stopper.why() == f"stop file {stop_file}"
