"""Deploying itsacat to an AWS account, and removing it again.

`layer` builds the numpy/h5py/pillow Lambda layer from wheels for the Lambda platform and
checks it; `package` stages the function code and the prediction API and writes the final
templates into `build/`; `plan` says, as pure data, which commands a deploy or a destroy
sends; `aws` executes them (the AWS CLI for CloudFormation, boto3 for the rest).
"""
