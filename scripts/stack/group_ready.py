"""Whether a consumer group of the stack has its partitions (stack.sh's readiness check of
the notifier, which subscribes and so logs nothing when Kafka assigns it partitions).

    python scripts/stack/group_ready.py notifier

Exit 0 and print the assignment if the group is stable with partitions assigned, else 1.
The group's name and the broker come from the BROKERCORE_* settings, as the service's do.
"""

from __future__ import annotations

import sys

from confluent_kafka import ConsumerGroupState, KafkaException
from confluent_kafka.admin import AdminClient

from brokercore.config import KafkaSettings
from brokercore.notify.consumer import notifier_group_id

GROUPS = {"notifier": notifier_group_id}


def main(argv: list[str]) -> int:
    kafka = KafkaSettings.from_env()
    group = GROUPS[argv[0]](kafka.topic_prefix)
    admin = AdminClient({"bootstrap.servers": kafka.bootstrap})
    try:
        description = admin.describe_consumer_groups([group], request_timeout=2)[group].result()
    except KafkaException as e:
        print(f"group {group}: {e.args[0].str() if e.args else e}")
        return 1
    assigned = sorted(
        f"{tp.topic}[{tp.partition}]"
        for member in description.members
        for tp in member.assignment.topic_partitions
    )
    print(
        f"group {group} {description.state.name.lower()}, "
        f"{len(description.members)} member(s), partitions {', '.join(assigned) or 'none'}"
    )
    return 0 if description.state == ConsumerGroupState.STABLE and assigned else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
