"""Bucket and object operations on the tests' S3 server (moto), for tests/src/s3.rs.

python3 s3.py ENDPOINT create-bucket BUCKET [versioned]
python3 s3.py ENDPOINT objects BUCKET PREFIX     -> [{"key", "size", "etag"}]
python3 s3.py ENDPOINT versions BUCKET PREFIX    -> [{"key", "version_id", "etag", "size"}]
python3 s3.py ENDPOINT upload BUCKET FILE KEY [FILE KEY]...
python3 s3.py ENDPOINT download BUCKET PREFIX FOLDER  -> [relative names written]

Credentials and region come from the environment (S3Server::env); JSON on stdout; ETags
without their quotes.
"""

import json
import sys

try:
    import boto3
    from botocore.config import Config
except ImportError as error:
    sys.exit(f"{error}: pip install 'moto[server]==5.2.5' (it brings boto3)")


def main(endpoint, command, bucket, *rest):
    config = Config(connect_timeout=5, read_timeout=20, retries={"max_attempts": 2})
    s3 = boto3.client("s3", endpoint_url=endpoint, config=config)
    if command == "create-bucket":
        s3.create_bucket(Bucket=bucket)
        if rest == ("versioned",):
            s3.put_bucket_versioning(
                Bucket=bucket, VersioningConfiguration={"Status": "Enabled"}
            )
        return None
    if command == "objects":
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=rest[0])
        return [
            {"key": o["Key"], "size": o["Size"], "etag": o["ETag"].strip('"')}
            for page in pages
            for o in page.get("Contents", [])
        ]
    if command == "versions":
        pages = s3.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=rest[0])
        return [
            {
                "key": v["Key"],
                "version_id": v["VersionId"],
                "etag": v["ETag"].strip('"'),
                "size": v["Size"],
            }
            for page in pages
            for v in page.get("Versions", [])
        ]
    if command == "upload":
        for file, key in zip(rest[0::2], rest[1::2]):
            s3.upload_file(file, bucket, key)
        return None
    if command == "download":
        import os

        prefix, folder = rest
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        written = []
        for page in pages:
            for o in page.get("Contents", []):
                relative = o["Key"][len(prefix):]
                target = os.path.join(folder, relative)
                os.makedirs(os.path.dirname(target), mode=0o700, exist_ok=True)
                s3.download_file(bucket, o["Key"], target)
                written.append(relative)
        return written
    sys.exit(f"s3.py: unknown command {command}")


print(json.dumps(main(*sys.argv[1:])))
