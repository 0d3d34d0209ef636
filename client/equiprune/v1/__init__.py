"""Generated protobuf and gRPC stubs of proto/equiprune/v1 (do not edit: run proto/generate.py).

Both the client and the service import them, so they live with the torch-free client. Beside
them, `equiprune.protoset`: the FileDescriptorSet with the .proto comments, which server
reflection serves and tools in any language read as it is.
"""

from importlib.resources import files


def file_descriptor_set() -> bytes:
    """The serialized google.protobuf.FileDescriptorSet of these protos and their imports."""
    return files(__name__).joinpath("equiprune.protoset").read_bytes()
