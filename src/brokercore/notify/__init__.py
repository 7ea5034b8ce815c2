"""Notifications, one module per job: ``render`` (what an event or an alert's fire says
and to whom), ``preferences`` (who hears of what, where), ``router`` (the ``Notifier``:
in the app or by push, each push to its end), ``push`` (the push provider's client),
``dead_letters`` (pushes that failed every attempt, on Kafka), ``redelivery`` (the
reconciler's pass over them), ``consumer`` (the notifier's loop over ``events``) and
``alerts`` (price alerts)."""
