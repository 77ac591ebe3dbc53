package fhirdmp;

import ca.uhn.fhir.context.FhirContext;
import ca.uhn.fhir.context.support.DefaultProfileValidationSupport;
import ca.uhn.fhir.context.support.ValidationSupportContext;
import ca.uhn.fhir.parser.IParser;
import ca.uhn.fhir.validation.FhirValidator;
import ca.uhn.fhir.validation.ResultSeverityEnum;
import ca.uhn.fhir.validation.SingleValidationMessage;
import ca.uhn.fhir.validation.ValidationOptions;
import ca.uhn.fhir.validation.ValidationResult;
import com.fasterxml.jackson.databind.JsonNode;
import com.fasterxml.jackson.databind.ObjectMapper;
import com.fasterxml.jackson.databind.node.ArrayNode;
import com.fasterxml.jackson.databind.node.ObjectNode;
import java.io.IOException;
import java.nio.charset.StandardCharsets;
import java.nio.file.DirectoryStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import org.hl7.fhir.common.hapi.validation.support.CommonCodeSystemsTerminologyService;
import org.hl7.fhir.common.hapi.validation.support.InMemoryTerminologyServerValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.PrePopulatedValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.SnapshotGeneratingValidationSupport;
import org.hl7.fhir.common.hapi.validation.support.ValidationSupportChain;
import org.hl7.fhir.common.hapi.validation.validator.FhirInstanceValidator;
import org.hl7.fhir.r4.model.ElementDefinition;
import org.hl7.fhir.r4.model.StructureDefinition;

/**
 * The HAPI FHIR side of the profile/server agreement test (tests/test_profiles.py), offline.
 *
 * <p>Why a CLI of our own rather than the official validator_cli.jar: that jar is not on Maven
 * Central, downloads packages from packages.fhir.org at start, and starts one JVM per call. This
 * one uses only Maven Central artifacts (HAPI's validation module, the R4 core definitions it
 * ships), never touches the network, and validates a whole corpus in one JVM start.
 *
 * <pre>
 *   snapshot DIFF_DIR OUT_DIR   fill in the snapshot of each differential StructureDefinition
 *                               with HAPI's own generator, write them pretty-printed, then check
 *                               each one against the R4 StructureDefinition rules
 *   validate PROFILES_DIR       stdin: [{"id", "profile", "resource"}]; stdout: [{"id", "valid",
 *                               "issues": [{"severity", "location", "message"}]}]; valid means
 *                               no error or fatal issue (warnings and information do not count)
 * </pre>
 */
public final class Main {
  private static final ObjectMapper JSON = new ObjectMapper();

  private Main() {}

  public static void main(String[] args) throws IOException {
    if (args.length == 3 && args[0].equals("snapshot")) {
      System.exit(snapshot(Path.of(args[1]), Path.of(args[2])));
    } else if (args.length == 2 && args[0].equals("validate")) {
      validate(Path.of(args[1]));
    } else {
      System.err.println("usage: snapshot DIFF_DIR OUT_DIR | validate PROFILES_DIR < cases.json");
      System.exit(2);
    }
  }

  private static List<Path> jsonFiles(Path dir) throws IOException {
    List<Path> out = new ArrayList<>();
    try (DirectoryStream<Path> files = Files.newDirectoryStream(dir, "*.json")) {
      files.forEach(out::add);
    }
    out.sort(null);
    return out;
  }

  /** Our profiles on top of the R4 core definitions and the terminology HAPI evaluates in memory. */
  private static ValidationSupportChain chain(FhirContext ctx, List<StructureDefinition> profiles) {
    PrePopulatedValidationSupport ours = new PrePopulatedValidationSupport(ctx);
    profiles.forEach(ours::addStructureDefinition);
    return new ValidationSupportChain(
        new DefaultProfileValidationSupport(ctx),
        ours,
        new CommonCodeSystemsTerminologyService(ctx),
        new InMemoryTerminologyServerValidationSupport(ctx),
        new SnapshotGeneratingValidationSupport(ctx));
  }

  private static FhirValidator validator(FhirContext ctx, ValidationSupportChain chain) {
    FhirInstanceValidator module = new FhirInstanceValidator(chain);
    module.setAnyExtensionsAllowed(true);
    module.setNoTerminologyChecks(false);
    return ctx.newValidator().registerValidatorModule(module);
  }

  private static boolean isError(SingleValidationMessage m) {
    return m.getSeverity() == ResultSeverityEnum.ERROR || m.getSeverity() == ResultSeverityEnum.FATAL;
  }

  private static final Pattern EXAMPLE = Pattern.compile("StructureDefinition\\.snapshot\\.element\\[(\\d+)]\\.example\\[(\\d+)].*");

  /**
   * An issue in an example the snapshot copied unchanged from the core definition (R4's own
   * Consent.identifier example breaks a rule the validator checks): reported, not our error.
   */
  private static boolean inheritedExample(SingleValidationMessage m, StructureDefinition sd, StructureDefinition base) {
    Matcher match = EXAMPLE.matcher(m.getLocationString() == null ? "" : m.getLocationString());
    if (base == null || !match.matches()) {
      return false;
    }
    ElementDefinition element = sd.getSnapshot().getElement().get(Integer.parseInt(match.group(1)));
    ElementDefinition.ElementDefinitionExampleComponent example = element.getExample().get(Integer.parseInt(match.group(2)));
    for (ElementDefinition b : base.getSnapshot().getElement()) {
      if (b.getPath().equals(element.getPath())) {
        return b.getExample().stream().anyMatch(e -> e.equalsDeep(example));
      }
    }
    return false;
  }

  private static int snapshot(Path in, Path out) throws IOException {
    FhirContext ctx = FhirContext.forR4Cached();
    IParser parser = ctx.newJsonParser().setPrettyPrint(true);
    List<StructureDefinition> diffs = new ArrayList<>();
    for (Path file : jsonFiles(in)) {
      StructureDefinition sd = parser.parseResource(StructureDefinition.class, Files.readString(file));
      sd.setSnapshot(null);
      diffs.add(sd);
    }
    ValidationSupportChain chain = chain(ctx, diffs);
    ValidationSupportContext vctx = new ValidationSupportContext(chain);
    SnapshotGeneratingValidationSupport generator = new SnapshotGeneratingValidationSupport(ctx);
    FhirValidator validator = validator(ctx, chain);
    Files.createDirectories(out);
    int errors = 0;
    for (StructureDefinition sd : diffs) {
      StructureDefinition done =
          (StructureDefinition) generator.generateSnapshot(vctx, sd.copy(), sd.getUrl(), null, sd.getName());
      if (done == null || !done.hasSnapshot() || done.getSnapshot().getElement().isEmpty()) {
        System.err.println(sd.getId() + ": no snapshot generated");
        errors++;
        continue;
      }
      String text = parser.encodeResourceToString(done) + "\n";
      StructureDefinition base = (StructureDefinition) chain.fetchStructureDefinition(sd.getBaseDefinition());
      ValidationResult result = validator.validateWithResult(text);
      for (SingleValidationMessage m : result.getMessages()) {
        boolean inherited = isError(m) && inheritedExample(m, done, base);
        if (m.getSeverity() != ResultSeverityEnum.INFORMATION) {
          System.err.println(done.getIdPart() + " " + m.getSeverity() + (inherited ? " (in the core definition's example, ignored)" : "")
              + " " + m.getLocationString() + ": " + m.getMessage());
        }
        if (isError(m) && !inherited) {
          errors++;
        }
      }
      Files.writeString(out.resolve(done.getIdPart() + ".json"), text, StandardCharsets.UTF_8);
    }
    return errors == 0 ? 0 : 1;
  }

  private static void validate(Path profilesDir) throws IOException {
    FhirContext ctx = FhirContext.forR4Cached();
    IParser parser = ctx.newJsonParser();
    List<StructureDefinition> profiles = new ArrayList<>();
    for (Path file : jsonFiles(profilesDir)) {
      profiles.add(parser.parseResource(StructureDefinition.class, Files.readString(file)));
    }
    FhirValidator validator = validator(ctx, chain(ctx, profiles));
    JsonNode cases = JSON.readTree(System.in);
    ArrayNode results = JSON.createArrayNode();
    for (JsonNode c : cases) {
      ValidationOptions options = new ValidationOptions().addProfile(c.get("profile").asText());
      ValidationResult result = validator.validateWithResult(c.get("resource").toString(), options);
      ObjectNode r = results.addObject();
      r.put("id", c.get("id").asText());
      ArrayNode issues = r.putArray("issues");
      boolean valid = true;
      for (SingleValidationMessage m : result.getMessages()) {
        valid &= !isError(m);
        ObjectNode i = issues.addObject();
        i.put("severity", m.getSeverity().getCode());
        i.put("location", m.getLocationString());
        i.put("message", m.getMessage());
        if (m.getMessageId() != null) {
          i.put("messageId", m.getMessageId());
        }
      }
      r.put("valid", valid);
    }
    JSON.writerWithDefaultPrettyPrinter().writeValue(System.out, results);
    System.out.println();
  }
}
