#!/usr/bin/env bash
# Runs a test command that must fail (a negative control: the test run against a server
# with a deliberately planted bug). Exits 0 when the command failed, 1 when it passed.
#
# Usage: Scripts/expect-failure.sh COMMAND [ARGS...]
set -u
"$@"
rc=$?
if [ "$rc" = 0 ]; then
    echo "expect-failure: the command passed, but the planted bug should have made it fail"
    echo "0 passed, 1 failed"
    exit 1
fi
echo "expect-failure: the command failed (exit $rc) as it must with the planted bug"
echo "1 passed, 0 failed"
