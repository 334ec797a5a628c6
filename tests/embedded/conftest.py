"""Embedded tier: the embedded stack itself (emulator, local Lambda runtime, relay, faults).

What these tests may use: the session's stack (`embedded_stack`, with the test-only functions
of fixture_template.yaml) or stacks of their own (`tests.support.stack.running_stack`), their
processes and /proc, plain boto3 clients and the real AWS CLI over loopback, the `itsacat`
command as a subprocess, and moto in process to read what the stack persisted. Not the
internet nor AWS.
"""
