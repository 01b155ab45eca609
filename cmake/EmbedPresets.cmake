# Writes OUTPUT: a C++ initializer list of {name, json} pairs, one per file in
# INPUTS (a comma-separated list), the name being the file's stem.
string(REPLACE "," ";" inputs "${INPUTS}")
set(content "")
foreach(input ${inputs})
  get_filename_component(name ${input} NAME_WLE)
  file(READ ${input} json)
  string(APPEND content "{\"${name}\", R\"kiln_json(${json})kiln_json\"},\n")
endforeach()
file(WRITE ${OUTPUT}.tmp "${content}")
file(RENAME ${OUTPUT}.tmp ${OUTPUT})
