/**
 * The HTTP API's JSON: the proto3 JSON mapping, except that Flotilla's own
 * enums are spelled the way users write them on the command line and in
 * config files. A value's short name is its name without the enum's prefix,
 * in lower case, with - for _ (flotilla.v1.Strategy STRATEGY_BLUE_GREEN is
 * "blue-green"); the unspecified value is "". On the way in, the short name,
 * the canonical name (STRATEGY_BLUE_GREEN) and the number are all accepted.
 *
 * Pure: descriptors and JSON values in, JSON values out. The gateway, the CLI
 * and anything else that speaks the HTTP API use these two functions only.
 */
import { type DescEnum, type DescEnumValue, type DescMessage, type JsonValue, type MessageShape, fromJson, toJson } from "@bufbuild/protobuf";

/** Only Flotilla's enums get short names; well-known types keep their mapping. */
const OWN_PACKAGE = "flotilla.";

/** "STRATEGY_BLUE_GREEN" of enum Strategy → "blue-green"; the zero value → "". */
export function enumShortName(value: DescEnumValue): string {
  if (value.number === 0) return "";
  const prefix = value.parent.sharedPrefix?.toUpperCase() ?? "";
  const bare = prefix !== "" && value.name.startsWith(prefix) ? value.name.slice(prefix.length) : value.name;
  return bare.toLowerCase().replaceAll("_", "-");
}

/** The short names of an enum's values, in declaration order, without the zero value. */
export function enumShortNames(desc: DescEnum): string[] {
  return desc.values.filter((v) => v.number !== 0).map(enumShortName);
}

/** Bad input for an enum field, said in the API's words (the gateway answers it with 400). */
export class EnumValueError extends Error {
  constructor(
    readonly field: string,
    given: JsonValue,
    desc: DescEnum,
  ) {
    super(`${field}: ${JSON.stringify(given)} is not a ${desc.name} value; use one of ${enumShortNames(desc).join(", ")}`);
    this.name = "EnumValueError";
  }
}

type Direction = "in" | "out";

function isObject(v: JsonValue | undefined): v is { [k: string]: JsonValue } {
  return typeof v === "object" && v !== null && !Array.isArray(v);
}

function own(desc: DescMessage | DescEnum): boolean {
  return desc.typeName.startsWith(OWN_PACKAGE);
}

function enumValue(desc: DescEnum, v: JsonValue, dir: Direction, field: string): JsonValue {
  if (dir === "out") {
    if (typeof v !== "string") return v;
    const value = desc.values.find((x) => x.name === v);
    return value === undefined ? v : enumShortName(value);
  }
  if (typeof v === "number" || v === null) return v;
  if (typeof v !== "string") throw new EnumValueError(field, v, desc);
  const value = desc.values.find((x) => x.name === v) ?? desc.values.find((x) => enumShortName(x) === v.trim());
  if (value === undefined) throw new EnumValueError(field, v, desc);
  return value.name;
}

function rewrite(desc: DescMessage, json: JsonValue, dir: Direction, path: string): JsonValue {
  if (!own(desc) || !isObject(json)) return json;
  const out: { [k: string]: JsonValue } = { ...json };
  for (const field of desc.fields) {
    const key = field.jsonName in out ? field.jsonName : field.name in out ? field.name : undefined;
    if (key === undefined) continue;
    const v = out[key]!;
    const at = path === "" ? field.name : `${path}.${field.name}`;
    switch (field.fieldKind) {
      case "enum":
        if (own(field.enum)) out[key] = enumValue(field.enum, v, dir, at);
        break;
      case "message":
        out[key] = rewrite(field.message, v, dir, at);
        break;
      case "list":
        if (!Array.isArray(v)) break;
        if (field.listKind === "enum" && own(field.enum)) out[key] = v.map((x, i) => enumValue(field.enum, x, dir, `${at}[${i}]`));
        else if (field.listKind === "message") out[key] = v.map((x, i) => rewrite(field.message, x, dir, `${at}[${i}]`));
        break;
      case "map":
        if (!isObject(v)) break;
        if (field.mapKind === "enum" && own(field.enum))
          out[key] = Object.fromEntries(Object.entries(v).map(([k, x]) => [k, enumValue(field.enum, x, dir, `${at}.${k}`)]));
        else if (field.mapKind === "message")
          out[key] = Object.fromEntries(Object.entries(v).map(([k, x]) => [k, rewrite(field.message, x, dir, `${at}.${k}`)]));
        break;
      default:
        break;
    }
  }
  return out;
}

/**
 * A message as the HTTP API writes it, Flotilla enums by short name. Answers
 * carry every field (zero values too, so clients need no defaults); requests
 * may leave zero values out (`alwaysEmitImplicit: false`).
 */
export function toApiJson<Desc extends DescMessage>(schema: Desc, message: MessageShape<Desc>, options: { alwaysEmitImplicit?: boolean } = {}): JsonValue {
  return rewrite(schema, toJson(schema, message, { alwaysEmitImplicit: options.alwaysEmitImplicit ?? true }), "out", "");
}

/**
 * A message from the HTTP API's JSON. Unknown fields are ignored (newer
 * clients); an enum value that is none of the accepted spellings throws
 * EnumValueError naming the field and the values it takes.
 */
export function fromApiJson<Desc extends DescMessage>(schema: Desc, json: JsonValue): MessageShape<Desc> {
  return fromJson(schema, rewrite(schema, json, "in", ""), { ignoreUnknownFields: true });
}
