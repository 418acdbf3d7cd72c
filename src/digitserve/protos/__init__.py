"""The Open Inference Protocol's gRPC messages and service: the .proto and its generated modules.

`grpc_predict_v2.proto` is the interface; the `*_pb2*` modules beside it are generated from it by
`make protos` (`digitserve.protos.generate`) and committed, never edited by hand.
"""
