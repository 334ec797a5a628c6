"""The embedded AWS stack: the template's resources in an emulator, and a local Lambda runtime.


`itsacat up` starts it; handlers reach it through the standard endpoint environment
variables (`AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_LAMBDA`) and never know they are local.

Modules:
  emulator  the moto server process, with requests serialised
  deploy    package, translate and create the SAM template in the emulator
  cfn_backfill  resources moto's CloudFormation skips, applied from the template by hand
  functions what the runtime needs to know of each function, read back from the emulator
  workers   warm worker processes that run one handler each
  runtime   the Lambda Invoke API on loopback, worker pools, async retries, destinations
  relay     the SQS event source mapping (S3 notifications -> launch function)
  logsink   worker output -> CloudWatch Logs
  schedule  the scheduled (watchdog) invocations
  faults    the fault-injection hook consulted per invocation
  stack     start/stop/status of the whole thing, and its state on disk
  testing   a pytest plugin that runs a stack for a test session
"""
