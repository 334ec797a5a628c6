"""Adapters over the AWS resources (S3, DynamoDB), each wrapping an injected boto3 client."""
