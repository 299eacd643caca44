// The generated contracts, re-exported so that packages import "@ensemble/proto" and never a
// deep path. Everything under src/gen is produced by `npm run generate`; never edit it by hand.
export * from "./gen/ensemble/common/v1/access_pb.js";
export * from "./gen/grpc/health/v1/health_pb.js";
