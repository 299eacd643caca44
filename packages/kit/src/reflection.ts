// Server reflection (grpc.reflection.v1 and v1alpha) from the descriptors protobuf-es already
// embeds, so grpcurl / buf curl / Postman can call any service without the .proto files.
import { toBinary, type DescFile, type DescService } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema } from "@bufbuild/protobuf/wkt";
import type * as grpc from "@grpc/grpc-js";
import { ReflectionService } from "@grpc/reflection";

type PackageDefinition = ConstructorParameters<typeof ReflectionService>[0];

/** The files that define the services and everything they import, dependencies first. */
export function fileClosure(services: readonly DescService[]): DescFile[] {
  const seen = new Set<string>();
  const ordered: DescFile[] = [];
  const visit = (file: DescFile): void => {
    if (seen.has(file.name)) return;
    seen.add(file.name);
    for (const dep of file.dependencies) visit(dep);
    ordered.push(file);
  };
  for (const service of services) visit(service.file);
  return ordered;
}

/** Adds the reflection services to `server`, describing `services` (and nothing else). */
export function addReflection(
  server: Pick<grpc.Server, "addService">,
  services: readonly DescService[],
): void {
  const fileDescriptorProtos = fileClosure(services).map((file) =>
    Buffer.from(toBinary(FileDescriptorProtoSchema, file.proto)),
  );
  // @grpc/reflection reads only `fileDescriptorProtos` of each entry of a proto-loader package
  // definition; we give it the encoded descriptors directly instead of loading .proto files.
  const definition = Object.fromEntries(
    services.map((service) => [service.typeName, { fileDescriptorProtos }]),
  ) as unknown as PackageDefinition;
  new ReflectionService(definition, { services: services.map((s) => s.typeName) }).addToServer(
    server,
  );
}
