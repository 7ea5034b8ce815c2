"""The postbacks' breaker per URL (brokercore.notify.postbacks.Breaker): how many dead
letters in a row pause a URL, what resets the count, and what follows a pause."""

from __future__ import annotations

import pytest

from brokercore.notify.postbacks import Breaker, Paused
from brokercore.notify.push import PushFailed

DEAD, LIVE = "https://dead.example.com/", "https://live.example.com/"


def test_dead_letters_in_a_row_pause_the_url_alone():
    breaker = Breaker(3, pause=300)
    for _ in range(2):
        breaker.dead_lettered(DEAD)
    breaker.check(DEAD)  # two in a row: still tried
    breaker.delivered(DEAD)  # a delivery starts the count again
    for _ in range(2):
        breaker.dead_lettered(DEAD)
    breaker.check(DEAD)
    breaker.dead_lettered(DEAD)
    with pytest.raises(Paused, match="paused after 3 postbacks dead-lettered in a row"):
        breaker.check(DEAD)
    breaker.check(LIVE)  # another URL is not paused
    assert issubclass(Paused, PushFailed)  # a failure like any other to the router
    breaker.delivered(DEAD)  # e.g. one sent before the pause ended well after all
    breaker.check(DEAD)


def test_after_the_pause_one_more_dead_letter_pauses_again():
    breaker = Breaker(2, pause=0)  # a pause already over when it starts
    breaker.dead_lettered(DEAD)
    breaker.dead_lettered(DEAD)
    breaker.check(DEAD)  # the pause is over: tried again
    breaker.pause = 300
    breaker.dead_lettered(DEAD)  # the first try after it failed: paused at once
    with pytest.raises(Paused):
        breaker.check(DEAD)


def test_a_breaker_needs_a_failure_to_open():
    with pytest.raises(ValueError):
        Breaker(0)
